"""`refresh-features`: give a gallery enrolled before the second or the dense verifier what its
photos lack (SIFT features, a grey image)."""

from __future__ import annotations

import json

import click

from ..storage.gallery import Gallery
from . import cli, gallery_option, progress


@cli.command("refresh-features")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: added, missing (why each), photos by kind.")
@gallery_option
def refresh_features(as_json, gallery_path):
    """Add the SIFT features and grey image the second and the dense verifier need to photos
    enrolled before them, read again from the photo files: no re-enrolment. Relative photo paths are
    read from the current folder, as `enroll` stored them. Photos not found are listed (stderr)
    and left as they are; run it again once they are back: it adds only what is missing.

    \b
    Example:
        edge-retrieval refresh-features -g gallery.db
    """
    from ..enroll import refresh_features as refresh

    with Gallery(gallery_path, create=False) as gallery:
        report = refresh(gallery, lambda items: progress(items, "reading photos"))
        photos = gallery.feature_photos()
    if as_json:
        click.echo(
            json.dumps({"gallery": gallery_path, "added": report.added, "missing": report.missing, "photos": photos})
        )
        return
    for reason in report.missing:
        click.echo(f"missing {reason}", err=True)
    if any(reason.startswith("imported:") for reason in report.missing):
        click.echo(
            "note: imported photos are refreshed where they were enrolled: run refresh-features there, "
            "then export (or publish) again",
            err=True,
        )
    missing = f", {len(report.missing)} photo(s) missing (listed above)" if report.missing else ""
    click.echo(
        f"added what {report.added} photo(s) lacked in {gallery_path}{missing}; of {photos.get('orb', 0)} "
        f"enrolled photo(s), {photos.get('sift', 0)} have SIFT features, {photos.get('gray', 0)} a grey image"
    )
