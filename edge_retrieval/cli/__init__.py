"""The command line: a thin click layer over the library. Only here do errors become messages."""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import click
import cv2

from .. import demo as demo_data
from ..embedder import Embedder, unsupported_platform
from ..enroll import enroll as enroll_pairs
from ..enroll import enroll_negatives, list_images, plan, refresh_command
from ..errors import EdgeRetrievalError
from ..modelcard import DEFAULT_MODEL
from ..storage.gallery import Gallery
from . import faces as faces_cli
from .faces import FACES_HELP


class Group(click.Group):
    """Turns the library's typed errors into one-line messages and exit code 1."""

    def invoke(self, ctx):
        if problem := unsupported_platform():  # 32-bit ARM: refused at the start, not at the first model run
            click.echo(f"Error: {problem}", err=True)
            ctx.exit(1)
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


def progress(items, label: str = "embedding"):
    """A progress bar on a terminal for long loops; plain iteration otherwise."""
    if not sys.stderr.isatty() or len(items) < 20:
        yield from items
        return
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True, show_eta=True) as bar:
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
@click.option("--faces", is_flag=True, help=FACES_HELP + " Each photo must show exactly one face.")
@gallery_option
@model_option
@threads_option
def enroll(paths, label, meta, skip_bad, augment, not_item, faces, gallery_path, model_path, threads):
    """Enrol image files or folders (sub-folder names become labels).

    Warns (on stderr) about tiny, blurry or dark photos and photos nearly identical to
    another item's.

    \b
    Example (people: a folder per person):
        edge-retrieval enroll --faces -g people.db people/"""
    if faces:
        args = (paths, label, parse_meta(meta), skip_bad, not_item, gallery_path, model_path, threads, progress)
        report = faces_cli.enroll(*args)
        if report is not None:
            echo_report(report, gallery_path, "face(s)", "person(s)", "photo(s)")
        return
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
    echo_report(report, gallery_path, "image(s)", "item(s)", "bad file(s)")


def echo_report(report, gallery_path, images: str, items: str, bad: str) -> None:
    """An enrolment's skipped files and warnings (stderr), then its one-line summary."""
    for e in report.skipped:
        click.echo(f"skipped {e}", err=True)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    skipped = f", skipped {len(report.skipped)} {bad}" if report.skipped else ""
    click.echo(f"enrolled {report.images} {images} as {report.items} {items} in {gallery_path}{skipped}")


def expand_queries(paths) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out.extend(list_images(p) if p.is_dir() else [p])
    return out


def numbered(path: str, q: int, n: int) -> Path:
    """The output file of query q of n: PATH itself for one query, NAME-q.jpg for several."""
    out = Path(path)
    return out.with_name(f"{out.stem}-{q}{out.suffix or '.jpg'}") if n > 1 else out


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
@click.option(
    "--contact-sheet",
    type=click.Path(dir_okay=False),
    help="Draw the query and the enrolled photos of its top-k, with their scores, into this JPEG "
    "(several queries: NAME-0.jpg, …).",
)
@click.option("--faces", is_flag=True, help=FACES_HELP + " JSON adds faces: [{box, match, score}].")
@preset_option
@gallery_option
@model_option
@threads_option
def search(images, top_k, as_json, explain, contact_sheet, faces, preset, gallery_path, model_path, threads):
    """Look up one or many images (or folders of them): which item it is, or unknown.

    The same recognizer as the service and the kiosk: `matches` is the final ranking and its
    first entry is `match` when there is one; when the answer is unknown the best candidates
    are still listed with their scores.

    \b
    Example:
        edge-retrieval search photo.jpg --json -g gallery.db
    """
    from .. import contactsheet
    from ..explain import draw
    from ..preprocess import read_image
    from ..recognize import open_recognizer, ranking_json

    queries = expand_queries(images)
    if faces:
        return faces_cli.search(queries, top_k, as_json, gallery_path, model_path, threads)
    with Embedder(model_path, threads) as emb, Gallery(gallery_path, create=False) as gallery:
        gallery.check_model(emb.sha256, emb.card.name)
        with closing(open_recognizer(emb, gallery, preset)) as recognizer:
            meta = {item.id: item.metadata for item in gallery.items()}
            for q, path in enumerate(queries):
                frame = read_image(path)
                ranking = recognizer.recognize(frame)
                if explain:
                    out = numbered(explain, q, len(queries))
                    if not cv2.imwrite(str(out), draw(frame, ranking)):
                        raise click.ClickException(f"{out}: cannot write the explanation image")
                if contact_sheet:
                    tiles = contactsheet.ranking_tiles(frame, path.name, ranking, gallery, top_k)
                    contactsheet.write(numbered(contact_sheet, q, len(queries)), contactsheet.sheet(tiles))
                found = ranking_json(ranking, meta, top_k)
                if as_json:
                    click.echo(json.dumps({"query": str(path), **found}))
                else:
                    ranked = ", ".join(f"{m['label']} {m['score']:.3f}" for m in found["matches"])
                    click.echo(f"{path}: {ranking.label or 'unknown'} (score {ranking.score:.3f}); {ranked}")


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
@click.option("--faces", is_flag=True, help=FACES_HELP + " Needs --negatives: photos of people not enrolled.")
@preset_option
@gallery_option
@model_option
@threads_option
def calibrate(positives, negatives, fpir, dry_run, as_json, faces, preset, gallery_path, model_path, threads):
    """Set the thresholds that say "unknown" for a target false-alarm rate, and report the expected detection rate."""
    from .. import calibrate as cal
    from ..preprocess import read_image
    from ..recognize import open_recognizer

    if faces:
        result = faces_cli.calibrate(positives, negatives, fpir, dry_run, gallery_path, model_path, threads, progress)
    else:
        with Embedder(model_path, threads) as emb, Gallery(gallery_path, create=False) as gallery:
            gallery.check_model(emb.sha256, emb.card.name)
            with closing(open_recognizer(emb, gallery, preset)) as recognizer:
                pos = cal.labelled_frames(Path(positives)) if positives else []
                neg = [read_image(p) for p in list_images(Path(negatives))] if negatives else None
                result = cal.calibrate(recognizer, pos, neg, fpir=fpir, progress=progress)
                if not dry_run:
                    cal.store(recognizer, result)
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
    from ..modelcard import ModelCard, sha256_file

    card = ModelCard.load(ModelCard.path_for(model_path))
    out = {
        "model": {
            "path": model_path,
            "name": card.name,
            "sha256": sha256_file(model_path),
            "bytes": Path(model_path).stat().st_size,
            "input": [card.input_height, card.input_width],
            "output_kind": card.output_kind,
            "dim": card.whitening.get("dim") or card.output_dim,  # what the gallery holds (after whitening)
            "validation": card.validation,
        }
    }
    if Path(gallery_path).is_file():
        from ..enroll import lacking_photos

        with Gallery(gallery_path, create=False) as gallery:
            out["gallery"] = gallery.info()
            # photos enrolled before the second or the dense verifier: `refresh-features` adds what they lack
            out["gallery"]["features"]["lacking"] = len(lacking_photos(gallery))
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
        f = g["features"]
        if f.get("orb") or f.get("sift"):  # (a people gallery has none)
            lacking = (
                f"; {f['lacking']} lacking some: add them with {refresh_command(gallery_path)}" if f["lacking"] else ""
            )
            click.echo(
                f"         {f.get('orb', 0)} photo(s) with ORB features, {f.get('sift', 0)} with SIFT, "
                f"{f.get('gray', 0)} with a grey image{lacking}"
            )
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
    from ..evaluate import evaluate

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


# registers run, check-config, kiosk; events list/search/export/retry; doctor; fleet; refresh-features
from . import doctor, events, features, fleet, service  # noqa: E402, F401
