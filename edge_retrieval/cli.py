"""The command line: a thin click layer over the library. Only here do errors become messages."""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import click
import cv2

from . import demo as demo_data
from .embedder import Embedder
from .enroll import enroll as enroll_pairs
from .enroll import enroll_negatives, list_images, plan
from .errors import EdgeRetrievalError
from .modelcard import DEFAULT_MODEL
from .storage.gallery import Gallery


class Group(click.Group):
    """Turns the library's typed errors into one-line messages and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeRetrievalError as e:
            click.echo("Error: " + " ".join(str(e).splitlines()), err=True)  # one line, whatever the message
            ctx.exit(1)
        except sqlite3.DatabaseError as e:  # damage SQLite finds only when it reads the page (not at open)
            where = ctx.meta.get(GALLERY_KEY, "the gallery")
            click.echo(
                f"Error: {where}: damaged gallery database ({' '.join(str(e).split())}); "
                f"check it with: sqlite3 {where} 'PRAGMA integrity_check'",
                err=True,
            )
            ctx.exit(1)


GALLERY_KEY = "edge_retrieval.gallery_path"  # in ctx.meta (shared by nested contexts): named in errors


def remember_gallery(ctx, param, value):
    ctx.meta[GALLERY_KEY] = value
    return value


gallery_option = click.option(
    "--gallery",
    "-g",
    "gallery_path",
    default="gallery.db",
    show_default=True,
    envvar="EDGE_RETRIEVAL_GALLERY",
    type=click.Path(dir_okay=False),
    callback=remember_gallery,
    help="Gallery SQLite file (env EDGE_RETRIEVAL_GALLERY).",
)
model_option = click.option(
    "--model",
    "-m",
    "model_path",
    default=str(DEFAULT_MODEL),
    show_default=True,
    envvar="EDGE_RETRIEVAL_MODEL",
    type=click.Path(dir_okay=False),
    help="The .tflite model; its .json card must sit beside it.",
)
preset_option = click.option(
    "--preset",
    default="default",
    show_default=True,
    type=click.Choice(["default", "quick", "fast", "whole"]),
    help="default: CNN regions + ORB votes over the gallery + geometric verification; quick: the "
    "same with half the ORB features; fast: CNN regions only; whole: the whole-frame descriptor.",
)
threads_option = click.option(
    "--threads", default=2, show_default=True, type=click.IntRange(1, 64), help="Interpreter threads."
)


def parse_meta(pairs: tuple[str, ...]) -> dict:
    meta = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--meta")
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return meta


@click.group(cls=Group)
@click.version_option(package_name="edge-retrieval")
def cli():
    """On-device image retrieval: enrol photos in a gallery, then look images up."""


def progress(items):
    """A progress bar on a terminal for long loops; plain iteration otherwise."""
    if not sys.stderr.isatty() or len(items) < 20:
        yield from items
        return
    with click.progressbar(items, label="embedding", file=sys.stderr, show_pos=True, show_eta=True) as bar:
        yield from bar


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--label", "-l", help="Label for every image given (default: sub-folder name or file name).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata for the enrolled items (repeatable).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (and report how many) instead of stopping.")
@click.option(
    "--augment",
    default=0,
    show_default=True,
    type=click.IntRange(0, 64),
    help="Also enrol this many camera-like views (tilt, crop, light, blur) of every photo.",
)
@click.option(
    "--not",
    "not_item",
    metavar="LABEL",
    help="Enrol the images as negatives of item LABEL (\"this is NOT LABEL\"): they veto its matches.",
)
@gallery_option
@model_option
@threads_option
def enroll(paths, label, meta, skip_bad, augment, not_item, gallery_path, model_path, threads):
    """Enrol image files or folders (sub-folder names become labels).

    Warns (on stderr) about tiny, blurry or dark photos and photos nearly identical to
    another item's."""
    if not_item:
        with Embedder(model_path, threads) as emb, Gallery(gallery_path, create=False) as gallery:
            n = enroll_negatives(gallery, emb, not_item, [p for _, p in plan(paths, not_item)])
        click.echo(f"enrolled {n} negative image(s) of {not_item} in {gallery_path}")
        return
    metadata = parse_meta(meta)
    pairs = plan(paths, label)
    with Embedder(model_path, threads) as emb, Gallery(gallery_path) as gallery:
        report = enroll_pairs(
            gallery, emb, pairs, metadata=metadata, skip_bad=skip_bad, progress=progress, augment=augment
        )
    for e in report.skipped:
        click.echo(f"skipped {e}", err=True)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    skipped = f", skipped {len(report.skipped)} bad file(s)" if report.skipped else ""
    click.echo(f"enrolled {report.images} image(s) as {report.items} item(s) in {gallery_path}{skipped}")


def expand_queries(paths) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out.extend(list_images(p) if p.is_dir() else [p])
    return out


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option(
    "--top-k",
    "-k",
    default=5,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="How many ranked candidates to list.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per query: query, match (label or null), score, threshold, margin, inliers, "
    "matches (the final ranking, best first: label, item_id, score, cosine, inliers, votes, metadata).",
)
@click.option(
    "--explain",
    type=click.Path(dir_okay=False),
    help="Draw where the item was found into this image (several queries: NAME-0.jpg, NAME-1.jpg, …).",
)
@preset_option
@gallery_option
@model_option
@threads_option
def search(images, top_k, as_json, explain, preset, gallery_path, model_path, threads):
    """Look up one or many images (or folders of them): which item it is, or unknown.

    The same recognizer as the service and the kiosk: `matches` is the final ranking and its
    first entry is `match` when there is one; when the answer is unknown the best candidates
    are still listed with their scores.

    \b
    Example:
        edge-retrieval search photo.jpg --json -g gallery.db
    """
    from .explain import draw
    from .preprocess import read_image
    from .recognize import open_recognizer, ranking_json

    queries = expand_queries(images)
    with Embedder(model_path, threads) as emb, Gallery(gallery_path, create=False) as gallery:
        gallery.check_model(emb.sha256, emb.card.name)
        recognizer = open_recognizer(emb, gallery, preset)
        meta = {item.id: item.metadata for item in gallery.items()}
        for q, path in enumerate(queries):
            frame = read_image(path)
            ranking = recognizer.recognize(frame)
            if explain:
                out = Path(explain)
                if len(queries) > 1:
                    out = out.with_name(f"{out.stem}-{q}{out.suffix or '.jpg'}")
                if not cv2.imwrite(str(out), draw(frame, ranking)):
                    raise click.ClickException(f"{out}: cannot write the explanation image")
            found = ranking_json(ranking, meta, top_k)
            if as_json:
                click.echo(json.dumps({"query": str(path), **found}))
            else:
                ranked = ", ".join(f"{m['label']} {m['score']:.3f}" for m in found["matches"])
                click.echo(f"{path}: {ranking.label or 'unknown'} (score {ranking.score:.3f}); {ranked}")
        recognizer.close()


@cli.command()
@click.option(
    "--positives",
    type=click.Path(exists=True, file_okay=False),
    help="Labelled captures: a folder with one sub-folder per item label.",
)
@click.option(
    "--negatives",
    type=click.Path(exists=True, file_okay=False),
    help="Captures of nothing enrolled (default: a built-in bank of bundled photos and enrolled negatives).",
)
@click.option(
    "--fpir",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Target false-alarm rate: the share of non-enrolled captures allowed to match.",
)
@click.option("--dry-run", is_flag=True, help="Report, but do not store the thresholds.")
@click.option("--json", "as_json", is_flag=True)
@preset_option
@gallery_option
@model_option
@threads_option
def calibrate(positives, negatives, fpir, dry_run, as_json, preset, gallery_path, model_path, threads):
    """Set the thresholds that say "unknown" for a target false-alarm rate, and report the expected detection rate."""
    from . import calibrate as cal
    from .preprocess import read_image
    from .recognize import open_recognizer

    with Embedder(model_path, threads) as emb, Gallery(gallery_path, create=False) as gallery:
        gallery.check_model(emb.sha256, emb.card.name)
        recognizer = open_recognizer(emb, gallery, preset)
        pos = cal.labelled_frames(Path(positives)) if positives else []
        neg = [read_image(p) for p in list_images(Path(negatives))] if negatives else None
        result = cal.calibrate(recognizer, pos, neg, fpir=fpir, progress=progress)
        if not dry_run:
            cal.store(recognizer, result)
        recognizer.close()
    if as_json:
        click.echo(json.dumps(result.report()))
        return
    click.echo(
        f"preset {result.preset}: threshold {result.threshold:.4f} for FPIR {fpir:g} "
        f"({result.negatives} negatives, {result.negatives_source}; measured FPIR {result.fpir:.3f})"
    )
    if result.dir is not None:
        click.echo(
            f"expected detection rate (DIR) {result.dir:.3f}, recall@1 {result.recall_at_1:.3f} "
            f"on {result.positives} positives; {len(result.per_item)} per-item threshold(s)"
        )
    else:
        click.echo("no positives given: the detection rate is not known (pass --positives)")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo("not stored (--dry-run)" if dry_run else f"stored in {gallery_path}")


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per item.")
@gallery_option
def list_items(as_json, gallery_path):
    """List the gallery's items."""
    with Gallery(gallery_path, create=False) as gallery:
        items = gallery.items()
    for item in items:
        if as_json:
            click.echo(
                json.dumps(
                    {"item_id": item.id, "label": item.label, "embeddings": item.embeddings, "metadata": item.metadata}
                )
            )
        else:
            meta = " ".join(f"{k}={v}" for k, v in item.metadata.items())
            click.echo(f"{item.id:>6}  {item.label}  ({item.embeddings} embedding(s)) {meta}".rstrip())


@cli.command()
@click.argument("items", nargs=-1, required=True)
@gallery_option
def remove(items, gallery_path):
    """Remove items by label or by numeric id."""
    with Gallery(gallery_path, create=False) as gallery:
        with gallery.transaction():
            removed = [gallery.remove(int(i) if i.isdigit() else i) for i in items]
    for item in removed:
        click.echo(f"removed {item.label} (id {item.id}, {item.embeddings} embedding(s))")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@gallery_option
def export(path, gallery_path):
    """Write the gallery to one portable file."""
    with Gallery(gallery_path, create=False) as gallery:
        counts = gallery.export(path)
    click.echo(f"exported {counts['items']} item(s), {counts['embeddings']} embedding(s) to {path}")


@cli.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--unverified",
    is_flag=True,
    help="Also import an export without a manifest (made by an older version): its rows are checked, "
    "their sha256 cannot be.",
)
@gallery_option
def import_(path, unverified, gallery_path):
    """Merge an exported gallery file into the gallery (verified against its manifest; all or nothing)."""
    with Gallery(gallery_path) as gallery:
        counts = gallery.import_from(path, verify=not unverified)
    click.echo(f"imported {counts['items']} item(s), {counts['embeddings']} embedding(s) into {gallery_path}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@gallery_option
@model_option
def info(as_json, gallery_path, model_path):
    """Show the model, the gallery's counts and sizes."""
    from .modelcard import ModelCard, sha256_file

    card = ModelCard.load(ModelCard.path_for(model_path))
    out = {
        "model": {
            "path": model_path,
            "name": card.name,
            "sha256": sha256_file(model_path),
            "bytes": Path(model_path).stat().st_size,
            "input": [card.input_height, card.input_width],
            "output_kind": card.output_kind,
            "dim": card.output_dim,
            "validation": card.validation,
        }
    }
    if Path(gallery_path).is_file():
        with Gallery(gallery_path, create=False) as gallery:
            out["gallery"] = gallery.info()
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    m = out["model"]
    click.echo(f"model    {m['name']}  {m['path']}  ({m['bytes'] / 1e6:.1f} MB, sha256 {m['sha256'][:12]}…)")
    click.echo(f"         input {m['input'][0]}×{m['input'][1]}, {m['output_kind']} → {m['dim']}-d descriptor")
    if "gallery" in out:
        g = out["gallery"]
        click.echo(
            f"gallery  {g['path']}  {g['items']} item(s), {g['embeddings']} embedding(s), "
            f"{g['file_bytes'] / 1e6:.2f} MB on disk, {g['matrix_bytes'] / 1e6:.2f} MB matrix"
        )
        if g["model_sha256"]:
            click.echo(f"         belongs to model {g['model_name']} (sha256 {g['model_sha256'][:12]}…)")
    else:
        click.echo(f"gallery  {gallery_path} does not exist yet")


@cli.command("eval")
@click.argument("ground_truth", type=click.Path(exists=True, dir_okay=False))
@click.option("--subset", help="Only queries whose path starts with this folder (e.g. qsd1_w1).")
@click.option("--json", "as_json", is_flag=True)
@preset_option
@model_option
@threads_option
def eval_(ground_truth, subset, as_json, preset, model_path, threads):
    """Measure recall@1, recall@5 and MRR on a ground-truth JSON (query path → record path).

    \b
    Example:
        edge-retrieval eval ../shared/data/museum/ground_truth.json --subset qsd1_w1
    """
    from .evaluate import evaluate

    with Embedder(model_path, threads) as emb:
        result = evaluate(Path(ground_truth), emb, subset, preset)
    if as_json:
        fields = {k: v for k, v in result.__dict__.items() if k != "ranks"}
        click.echo(json.dumps(fields))
    else:
        click.echo(
            f"{subset or ground_truth}: {result.queries} queries, {result.records} records  "
            f"recall@1 {result.recall_at_1:.3f}  recall@5 {result.recall_at_5:.3f}  "
            f"MRR {result.mrr:.3f}  {result.ms_per_query:.1f} ms/query"
        )


@cli.command()
@click.option("--seed", default=0, show_default=True, help="Seed of the simulated camera views.")
@preset_option
@model_option
@threads_option
def demo(seed, preset, model_path, threads):
    """Enrol the built-in photos, then look up simulated camera views of them (no camera needed)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        Embedder(model_path, threads) as emb,
        Gallery(Path(tmp) / "demo.db") as gallery,
    ):
        lookups = demo_data.run(emb, gallery, seed, preset)
        click.echo(f"enrolled {len(demo_data.ITEMS)} items from {demo_data.PHOTOS} with model {emb.card.name}")
        for x in lookups:
            best = x.ranking.best
            seen = f"best {best.label} {best.score:.3f}" if best else "empty gallery"
            click.echo(
                f"camera view of {x.name:<10} → {x.answer:<10} ({seen}, threshold "
                f"{x.ranking.threshold or float('nan'):.3f})  {x.ms:5.1f} ms  truth: {x.truth}"
            )
        hits = sum(x.answer == x.truth for x in lookups)
        click.echo(f"{hits}/{len(lookups)} right (preset {preset}, as `search`, the service and the kiosk answer)")


# -- the service -------------------------------------------------------------------
def setup_logging(level: str):
    """Log lines on stderr (no timestamps under systemd: the journal adds them); returns the handler."""
    import logging
    import os

    fmt = "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s %(levelname)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def service_config(config_path, settings, demo: bool, flags: dict):
    """The config file, then `--set key=value`, then the flags given; and whether to play the demo
    (asked for, or nothing to watch configured)."""
    from .config import load_config, parse_assignment

    overrides = dict(parse_assignment(text) for text in settings)
    overrides.update({key: value for key, value in flags.items() if value is not None})
    config = load_config(config_path, overrides)
    return config, demo or (not config.source.uri and not config.gallery.path)


def apply(*decorators):
    """A group of options shared by several commands, applied as one decorator."""

    def wrap(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


service_options = apply(
    click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar="EDGE_RETRIEVAL_CONFIG",
        help="TOML config file (env EDGE_RETRIEVAL_CONFIG); the flags below override it.",
    ),
    click.option("--source", "-s", help="V4L2 device index (0), video file, rtsp/http URL or image folder."),
    click.option(
        "--gallery",
        "-g",
        "gallery_path",
        type=click.Path(dir_okay=False),
        envvar="EDGE_RETRIEVAL_GALLERY",
        help="Gallery SQLite file (env EDGE_RETRIEVAL_GALLERY).",
    ),
    click.option(
        "--model",
        "-m",
        "model_path",
        type=click.Path(dir_okay=False),
        envvar="EDGE_RETRIEVAL_MODEL",
        help="The .tflite model (default: the built-in one).",
    ),
    click.option(
        "--set",
        "settings",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override any config key, e.g. --set decision.preset=quick (repeatable).",
    ),
    click.option(
        "--demo",
        is_flag=True,
        help="Play the built-in demo clip against the built-in demo gallery (also "
        "the default when no source and no gallery are configured).",
    ),
)


@cli.command()
@service_options
@click.option(
    "--fps", type=click.FloatRange(min=0), help="Target rate of processed frames (0 = as fast as frames come)."
)
@click.option("--threads", type=click.IntRange(1, 64), help="Interpreter threads.")
@click.option("--stats", is_flag=True, help="Print fps and per-stage timings while running and a table at the end.")
def run(config_path, source, gallery_path, model_path, settings, demo, fps, threads, stats):
    """Watch a camera (or file, stream, folder) and alert on gallery items: the on-device service.

    \b
    Examples:
        edge-retrieval run                                  # the built-in demo
        edge-retrieval run --source 0 -g gallery.db --set sinks.webhook.url=http://hub.local/alerts
    """
    import logging
    import signal
    import threading

    from .service.daemon import Daemon

    config, demo = service_config(
        config_path,
        settings,
        demo,
        {
            "source.uri": source,
            "source.fps": fps,
            "gallery.path": gallery_path,
            "model.path": model_path,
            "model.threads": threads,
        },
    )
    handler = setup_logging(config.service.log_level)
    stop = threading.Event()

    def on_signal(signum, frame):  # only sets the stop event: the loop does the rest
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    on_stats = (lambda metrics: click.echo(metrics.line(), err=True)) if stats else None
    try:
        summary = Daemon(config, stop=stop, demo=demo, on_stats=on_stats).run()
    finally:
        for signum, previous_handler in previous.items():
            signal.signal(signum, previous_handler)
        logging.getLogger().removeHandler(handler)
    alerts = len(summary.decisions)
    click.echo(
        f"{summary.reason}: {summary.frames} frame(s) processed, {summary.embedded} embedded, {alerts} alert(s)",
        err=True,
    )
    if stats and summary.metrics is not None:
        click.echo(summary.metrics.table(), err=True)


@cli.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--show", is_flag=True, help="Print the effective configuration (defaults filled in) as TOML, secrets shown as ***."
)
def check_config(path, show):
    """Validate a TOML config file; errors name the key path (e.g. decision.votes.m)."""
    from .config import SECRET, load_config, redacted, to_toml

    config = load_config(path)
    if show:
        click.echo(
            f"# {path}, defaults filled in; passwords, tokens, header values and URL credentials and "
            f"query values shown as {SECRET}\n"
        )
        click.echo(to_toml(redacted(config)), nl=False)
    else:
        click.echo(f"{path}: ok")


@cli.group()
def events():
    """The service's events and where each stands with every sink (delivered, pending, parked)."""


def open_events(gallery_path):
    from .storage.events import EventLog

    Gallery(gallery_path, create=False).close()  # a missing file is an error, not a new gallery
    return EventLog(gallery_path, [])


@events.command("list")
@click.option("--parked", is_flag=True, help="Only events a sink refused for good (parked until retried).")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(1), help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event: its payload and \"deliveries\".")
@gallery_option
def events_list(parked, limit, as_json, gallery_path):
    """Recent events, newest first, with each sink's delivery: delivered, pending or parked (and the error)."""
    with open_events(gallery_path) as log:
        rows = log.deliveries(limit, parked=parked)
    for event, deliveries in rows:
        if as_json:
            click.echo(json.dumps({**event.payload(), "deliveries": [vars(d) for d in deliveries]}))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.time))
        states = ", ".join(
            f"{d.sink} {d.state}" + (f" ({d.error})" if d.error and d.state != "delivered" else "") for d in deliveries
        )
        click.echo(
            f"{event.id:>6}  {when}  {event.source}  {event.label or event.kind} {event.score:.2f}  "
            f"{states or 'no sinks'}"
        )


@events.command("retry")
@click.argument("event_ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every parked event.")
@gallery_option
def events_retry(event_ids, every, gallery_path):
    """Un-park events a sink refused for good: the running service sends them again within
    30 s (the next service at its start)."""
    if bool(event_ids) == every:
        raise click.UsageError("give EVENT_ID... or --all")
    with open_events(gallery_path) as log:
        retried = log.retry(None if every else event_ids)
    for event_id, sink in retried:
        click.echo(f"event {event_id}: {sink} will be tried again")
    for event_id in sorted(set(event_ids) - {e for e, _ in retried}):
        click.echo(f"event {event_id}: nothing parked", err=True)


# -- the kiosk -------------------------------------------------------------------------
@cli.command()
@service_options
@click.option("--host", help="Address to serve on (default 127.0.0.1; 0.0.0.0 = the network too).")
@click.option("--port", "-p", type=click.IntRange(0, 65535), help="TCP port (default 8080; 0 = any free port).")
@click.option(
    "--token",
    envvar="EDGE_RETRIEVAL_KIOSK_TOKEN",
    help="Staff token (env EDGE_RETRIEVAL_KIOSK_TOKEN; default: kiosk.token, else a new random one).",
)
def kiosk(config_path, source, gallery_path, model_path, settings, demo, host, port, token):
    """Serve the kiosk page: the live camera and the record of the item held up to it; /admin for staff.

    \b
    Examples:
        edge-retrieval kiosk                                # the built-in demo
        edge-retrieval kiosk --source 0 --gallery gallery.db --port 9000
    """
    from .kiosk import Kiosk, Server

    config, demo = service_config(
        config_path,
        settings,
        demo,
        {
            "source.uri": source,
            "gallery.path": gallery_path,
            "model.path": model_path,
            "kiosk.host": host,
            "kiosk.port": port,
            "kiosk.token": token,
        },
    )
    setup_logging(config.service.log_level)
    if demo:
        click.echo("preparing the built-in demo (clip and gallery)…", err=True)
    with Kiosk(config, demo=demo) as kiosk:
        kiosk.open()
        server = Server(kiosk, config.kiosk.host, config.kiosk.port)
        click.echo(f"kiosk page:  {server.url}", err=True)
        click.echo(f"staff page:  {server.staff_address(show_token=sys.stderr.isatty())}", err=True)
        server.run()


if __name__ == "__main__":
    cli()
