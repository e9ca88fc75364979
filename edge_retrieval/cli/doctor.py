"""`edge-retrieval doctor`: check the device's set-up and measure what its CPU holds."""

from __future__ import annotations

import json

import click

from . import cli
from .service import service_config, service_options


@cli.command()
@service_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--camera-timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds the camera's first frame may take.",
)
def doctor(config_path, source, gallery_path, model_path, settings, demo, as_json, camera_timeout):
    """Check the camera, model, gallery and disk as the service would use them, time every preset
    on this CPU and advise a preset and frame rate. Exits 1 when a check fails (stop the service
    first: the two share the CPU and the camera).

    \b
    Examples:
        edge-retrieval doctor --config /etc/edge-retrieval/edge-retrieval.toml
        edge-retrieval doctor --source 0 --gallery gallery.db --json
        edge-retrieval doctor --demo                        # no camera: the built-in demo
    """
    from ..doctor import diagnose

    config, demo = service_config(
        config_path,
        settings,
        demo,
        {"source.uri": source, "gallery.path": gallery_path, "model.path": model_path},
    )
    report = diagnose(config, demo=demo, camera_timeout=camera_timeout)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(report.table())
    if not report.ok:
        failed = [c for c in report.checks if c.status == "fail"]
        click.echo("Error: " + "; ".join(f"{c.name}: {c.detail}" for c in failed), err=True)
        raise SystemExit(1)
