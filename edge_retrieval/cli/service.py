"""The commands of the on-device service: `run`, `check-config`, `events`, `kiosk`."""

from __future__ import annotations

import sys

import click

from ..storage.gallery import Gallery
from . import cli, gallery_option


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
    from ..config import load_config, parse_assignment

    overrides = dict(parse_assignment(text) for text in settings)
    overrides.update({key: value for key, value in flags.items() if value is not None})
    config = load_config(config_path, overrides)
    return config, demo or (not config.source.uri and not config.gallery.path and not config.people.gallery)


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
    click.option(
        "--source",
        "-s",
        help="V4L2 device index (0), video file, rtsp/http URL, image folder or exec:PROGRAM writing Motion-JPEG.",
    ),
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
        help="Play the built-in demo clip (or the --source given) against the built-in demo "
        "gallery (also the default when no source and no gallery are configured).",
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

    from ..service.daemon import Daemon

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
    from ..config import SECRET, load_config, redacted, to_toml

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
    """The service's events: list, search by example, export as a contact sheet; retry deliveries."""


def event_log(gallery_path):
    from ..storage.events import EventLog

    Gallery(gallery_path, create=False).close()  # a missing file is an error, not a new gallery
    return EventLog(gallery_path, [])


@events.command("retry")
@click.argument("event_ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every parked event.")
@gallery_option
def events_retry(event_ids, every, gallery_path):
    """Un-park events a sink refused for good: the running service sends them again within
    30 s (the next service at its start)."""
    if bool(event_ids) == every:
        raise click.UsageError("give EVENT_ID... or --all")
    with event_log(gallery_path) as log:
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
    from ..kiosk import Kiosk, Server

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
        click.echo(f"events page: {server.staff_address(sys.stderr.isatty(), 'events')}", err=True)
        server.run()
