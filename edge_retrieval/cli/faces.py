"""`--faces` of enroll, search and calibrate: the same commands over a people gallery.

Each existing command hands over here when `--faces` is given; `--model` then names the face
embedder (default: the bundled one), and `--preset` does not apply (faces have their own).
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import click
from click.core import ParameterSource

from ..enroll import plan
from ..storage.gallery import Gallery

FACES_HELP = "People instead of items: one face a photo, matched against a people gallery (README: People watchlist)."


def face_model(model_path: str) -> str | None:
    """The face embedder: `--model` when the user gave it, else the bundled one (None)."""
    ctx = click.get_current_context()
    return model_path if ctx.get_parameter_source("model_path") != ParameterSource.DEFAULT else None


def _open(gallery: Gallery, model_path: str, threads: int):
    from ..recognize.faces import open_face_recognizer

    return open_face_recognizer(gallery, face_model(model_path), threads=threads)


def enroll(paths, label, meta: dict, skip_bad, not_item, gallery_path, model_path, threads, progress):
    """The enrolment's report (printed by the caller as the items' is), or None for `--not`."""
    from ..faces.enroll import FaceEnrollError, enroll_face_negatives, enroll_faces

    try:
        if not_item:
            with Gallery(gallery_path, create=False) as gallery, closing(_open(gallery, model_path, threads)) as rec:
                n = enroll_face_negatives(rec, not_item, [p for _, p in plan(paths, not_item)])
            click.echo(f"enrolled {n} negative face photo(s) of {not_item} in {gallery_path}")
            return None
        with Gallery(gallery_path) as gallery, closing(_open(gallery, model_path, threads)) as recognizer:
            report = enroll_faces(recognizer, plan(paths, label), metadata=meta, skip_bad=skip_bad, progress=progress)
    except FaceEnrollError as e:
        for refused in e.refused:  # one line a photo, then the error
            click.echo(f"refused {refused}", err=True)
        raise
    return report


def search(queries: list[Path], top_k, as_json, gallery_path, model_path, threads) -> None:
    from ..preprocess import read_image
    from ..recognize import ranking_json

    with Gallery(gallery_path, create=False) as gallery, closing(_open(gallery, model_path, threads)) as recognizer:
        meta = {item.id: item.metadata for item in gallery.items()}
        for path in queries:
            ranking = recognizer.recognize(read_image(path))
            found = ranking_json(ranking, meta, top_k)
            if as_json:
                click.echo(json.dumps({"query": str(path), **found}))
            else:
                faces = ", ".join(
                    f"{f['match'] or 'unknown'} {f['score'] or 0:.3f} at {f['box']}" for f in found["faces"]
                )
                click.echo(f"{path}: {ranking.label or 'unknown'}; {len(found['faces'])} face(s): {faces or 'none'}")


def calibrate(positives, negatives, fpir, dry_run, gallery_path, model_path, threads, progress):
    """The calibration, or ClickException without negatives (there is no built-in bank of faces)."""
    from .. import calibrate as cal
    from ..enroll import list_images
    from ..preprocess import read_image

    if not negatives:
        raise click.UsageError("calibrate --faces needs --negatives DIR: photos of people who are not enrolled")
    with Gallery(gallery_path, create=False) as gallery, closing(_open(gallery, model_path, threads)) as recognizer:
        pos = cal.labelled_frames(Path(positives)) if positives else []
        neg = [read_image(p) for p in list_images(Path(negatives))]
        neg += [read_image(s) for (s,) in gallery.db.execute("SELECT source FROM negatives") if s and Path(s).is_file()]
        result = cal.calibrate(recognizer, pos, neg, fpir=fpir, progress=progress)
        if not dry_run:
            cal.store(recognizer, result)
    return result
