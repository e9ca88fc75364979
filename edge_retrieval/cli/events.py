"""Reviewing the event history: `events list`, `events search`, `events export --contact-sheet`."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import click

from ..errors import EventError
from . import gallery_option, model_option, threads_option
from .service import apply, event_log, events

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, option: str, now: float | None = None) -> float:
    """'2h', '30m', '7d' (that long ago), or an ISO 8601 date or time (local time unless it says
    otherwise) → seconds since the epoch; EventError naming the option otherwise."""
    text = text.strip()
    relative = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if relative:
        return (time.time() if now is None else now) - float(relative[1]) * UNITS[relative[2]]
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise EventError(
            f"{option}: {text!r} is not a time (e.g. 2h, 30m, 7d ago, or 2026-12-06, 2026-12-06T14:30)"
        ) from None


def _time_option(name: str, help: str):
    return click.option(
        name,
        metavar="WHEN",
        callback=lambda ctx, param, value: None if value is None else parse_time(value, name),
        help=help,
    )


event_filters = apply(
    click.option("--label", "-l", help="Only events of this label."),
    click.option("--kind", type=click.Choice(["match", "unknown"]), help="Only matches, or only unknown objects."),
    click.option("--source", help="Only events from this camera (source name)."),
    _time_option("--since", "Only events at or after this time: 2h, 30m, 7d (ago), or 2026-12-06[T14:30]."),
    _time_option("--until", "Only events before this time (as --since)."),
)


def filters_of(label, kind, source, since, until) -> dict:
    return {"label": label, "kind": kind, "source": source, "since": since, "until": until}


def when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@events.command("list")
@event_filters
@click.option("--parked", is_flag=True, help="Only events a sink refused for good (parked until retried).")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(1), help="How many, newest first.")
@click.option("--before", type=click.IntRange(1), metavar="EVENT_ID", help="The next page: events older than this id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event: its payload and \"deliveries\".")
@gallery_option
def events_list(label, kind, source, since, until, parked, limit, before, as_json, gallery_path):
    """Recent events, newest first, with each sink's delivery: delivered, pending or parked (and the error).

    \b
    Examples:
        edge-retrieval events list --label cat --since 2h
        edge-retrieval events list --kind unknown --since 2026-12-06 --json
    """
    filters = filters_of(label, kind, source, since, until)
    with event_log(gallery_path) as log:
        rows = log.deliveries(limit, parked=parked, before_id=before, **filters)
    for event, deliveries in rows:
        if as_json:
            click.echo(json.dumps({**event.payload(), "deliveries": [vars(d) for d in deliveries]}))
            continue
        states = ", ".join(
            f"{d.sink} {d.state}" + (f" ({d.error})" if d.error and d.state != "delivered" else "") for d in deliveries
        )
        click.echo(
            f"{event.id:>6}  {when(event.time)}  {event.source}  {event.label or event.kind} {event.score:.2f}  "
            f"{states or 'no sinks'}"
        )


@events.command("search")
@click.argument("image", required=False, type=click.Path())
@click.option("--event", "event_id", type=int, metavar="EVENT_ID", help="Events like this one (instead of IMAGE).")
@click.option("--top-k", "-k", default=20, show_default=True, type=click.IntRange(1, 10_000), help="How many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event: its payload and \"similarity\".")
@click.option("--contact-sheet", type=click.Path(dir_okay=False), help="Also draw them into this JPEG.")
@event_filters
@gallery_option
@model_option
@threads_option
def events_search(
    image, event_id, top_k, as_json, contact_sheet, label, kind, source, since, until, gallery_path, model_path, threads
):
    """Past events most like a photo (or like an event), best first: "when else was this seen?".

    The photo is described as an enrolled photo is (crop it to the object); each event kept the
    descriptor of the part of its frame that matched. Events recorded before this version have
    none and are not searched.

    \b
    Examples:
        edge-retrieval events search cat.jpg --top-k 10
        edge-retrieval events search --event 42 --since 7d --json
    """
    from ..embedder import Embedder
    from ..preprocess import read_image
    from ..storage.gallery import Gallery
    from ..storage.history import photo_descriptor

    if (image is None) == (event_id is None):
        raise click.UsageError("give an IMAGE or --event EVENT_ID")
    filters = filters_of(label, kind, source, since, until)
    with event_log(gallery_path) as log:
        if event_id is not None:
            found = log.similar_to(event_id, top_k=top_k, **filters)
        else:
            picture = read_image(image)  # a bad file is named before the model loads
            with Embedder(model_path, threads) as emb, Gallery(log.db) as gallery:
                gallery.check_model(emb.sha256, emb.card.name)  # the events' descriptors are the gallery's model's
                found = log.similar(photo_descriptor(emb, picture), top_k=top_k, **filters)
    if contact_sheet:
        write_sheet(contact_sheet, found)
    for event, similarity in found:
        if as_json:
            click.echo(json.dumps({**event.payload(), "similarity": round(similarity, 4)}))
        else:
            click.echo(
                f"{event.id:>6}  {when(event.time)}  {event.source}  {event.label or event.kind} {event.score:.2f}  "
                f"similarity {similarity:.3f}"
            )
    if not found and not as_json:
        click.echo("no events with a descriptor match", err=True)


@events.command("export")
@click.option(
    "--contact-sheet", required=True, type=click.Path(dir_okay=False), help="The JPEG to draw the thumbnails into."
)
@event_filters
@click.option(
    "--limit", "-n", default=50, show_default=True, type=click.IntRange(1, 2000), help="How many, newest first."
)
@gallery_option
def events_export(contact_sheet, label, kind, source, since, until, limit, gallery_path):
    """Draw events' snapshots into one JPEG: a grid of thumbnails with label, score, time and camera.

    \b
    Example:
        edge-retrieval events export --contact-sheet today.jpg --since 1d --label cat
    """
    with event_log(gallery_path) as log:
        found = log.query(limit=limit, **filters_of(label, kind, source, since, until))
    if not found:
        raise EventError(f"{gallery_path}: no events match; nothing written to {contact_sheet}")
    write_sheet(contact_sheet, [(e, None) for e in found])


def write_sheet(path: str, rows: list) -> None:
    from .. import contactsheet

    if not rows:
        raise EventError(f"no events to draw; nothing written to {path}")
    contactsheet.write(path, contactsheet.sheet(contactsheet.event_tiles(rows)))
    pictures = sum(1 for event, _ in rows if event.snapshot)
    click.echo(f"wrote {len(rows)} event(s) ({pictures} with a snapshot) to {path}", err=True)
