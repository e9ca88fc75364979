"""The fleet commands: `fleet publish` (a watchlist to a group of devices) and `fleet status`."""

from __future__ import annotations

import json
import time

import click

from . import cli
from .service import apply

broker_options = apply(
    click.option("--group", help="The fleet group (default: fleet.group of --config)."),
    click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False),
        help="TOML config whose [fleet] section gives the defaults (broker, key file, prefix).",
    ),
    click.option("--host", help="MQTT broker host (default 127.0.0.1)."),
    click.option("--port", type=click.IntRange(1, 65535), help="MQTT broker port (default 1883)."),
    click.option("--username", help="Broker user name."),
    click.option(
        "--password",
        envvar="EDGE_RETRIEVAL_FLEET_PASSWORD",
        help="Broker password (env EDGE_RETRIEVAL_FLEET_PASSWORD).",
    ),
    click.option("--tls/--no-tls", default=None, help="Connect with TLS (system CAs)."),
    click.option("--topic-prefix", help="Topic prefix (default edge-retrieval/fleet)."),
)


def fleet_config(config_path, group, **flags):
    """[fleet] of the config file (or the defaults), then the flags given."""
    import dataclasses

    from ..config import load_config
    from ..fleet import check_topic_part

    overrides = {f"fleet.{key}": value for key, value in flags.items() if value is not None}
    config = load_config(config_path, overrides).fleet
    if group is None:
        return config
    check_topic_part(group, "--group")
    return dataclasses.replace(config, group=group)  # (the group's key file is only needed to publish)


@cli.group()
def fleet():
    """One watchlist on many devices, through an MQTT broker (README: A fleet)."""


@fleet.command()
@click.argument("gallery_path", metavar="GALLERY", type=click.Path(dir_okay=False))
@broker_options
@click.option("--key-file", help="The fleet key file, mode 600 (default: fleet.key_file of --config).")
@click.option("--chunk-kb", default=256, show_default=True, type=click.IntRange(1, 65536), help="Size of each message.")
def publish(gallery_path, group, config_path, key_file, chunk_kb, **broker):
    """Publish GALLERY as the group's next watchlist version (signed, retained; followers apply it).

    \b
    Examples:
        edge-retrieval fleet publish gallery.db --group museum --key-file fleet.key
        edge-retrieval fleet publish gallery.db -c edge-retrieval.toml --host broker.lan
    """
    from ..fleet import load_key
    from ..fleet.wire import publish as publish_gallery

    config = fleet_config(config_path, group, key_file=key_file, **broker)
    key = load_key(config.key_file, "--key-file" if key_file else "fleet.key_file")
    head = publish_gallery(config, gallery_path, key, chunk_bytes=chunk_kb * 1024)
    click.echo(
        f"published {config.group} version {head['version']}: {head['items']} item(s), {head['size']} bytes in "
        f"{head['chunks']} message(s), model {head['model'].get('model_name') or head['model']['model_sha256'][:12]}"
    )


@fleet.command()
@broker_options
@click.option("--json", "as_json", is_flag=True, help="The group's version and each device's state as JSON.")
def status(group, config_path, as_json, **broker):
    """The devices of a group: version applied, items, model, fps, last error.

    \b
    Examples:
        edge-retrieval fleet status --group museum
        edge-retrieval fleet status --group museum --json
    """
    from ..fleet.wire import FleetError
    from ..fleet.wire import status as fleet_status

    config = fleet_config(config_path, group, **broker)
    if not config.group:
        raise FleetError("no group given (--group, or fleet.group in the config)")
    report = fleet_status(config)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    version = report["version"]
    click.echo(f"group {config.group}: version {version if version is not None else '-'} published")
    rows = [("DEVICE", "ONLINE", "VERSION", "ITEMS", "MODEL", "FPS", "SEEN", "LAST ERROR")]
    now = time.time()
    for d in report["devices"]:
        seen = d.get("time")
        rows.append(
            (
                d["device"],
                {True: "yes", False: "no"}.get(d.get("online"), "?"),
                str(d.get("version") if d.get("version") is not None else "-")
                + ("" if d.get("version") == version else " *"),
                str(d.get("items", "-")) + (f" ({d['local_items']} local)" if d.get("local_items") else ""),
                (d.get("model") or {}).get("model_name") or "-",
                f"{d['fps']:.1f}" if isinstance(d.get("fps"), (int, float)) else "-",
                f"{now - seen:.0f} s ago" if isinstance(seen, (int, float)) else "-",
                d.get("last_error") or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    if not report["devices"]:
        click.echo("(no device has reported yet)")
