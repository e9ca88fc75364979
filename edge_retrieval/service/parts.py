"""The one assembler: the parts a config describes (embedder, gallery, recognizer, source, sinks),
opened the same way for `run` and `kiosk`."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from .. import democlip
from ..camera import open_source
from ..config import Config
from ..decide import Decider
from ..embedder import Embedder
from ..errors import ConfigError, EdgeRetrievalError
from ..recognize import Recognizer, Stage, no_stage, open_recognizer
from ..storage.gallery import Gallery

log = logging.getLogger(__name__)


def embedder(config: Config) -> Embedder:
    return Embedder(config.model.path or None, config.model.threads)


def gallery(config: Config) -> Gallery:
    return Gallery(config.gallery.path)


def recognizer(config: Config, embedder, gallery, stage: Stage = no_stage) -> Recognizer:
    d = config.decision
    return open_recognizer(embedder, gallery, d.preset, threshold=d.threshold, margin=d.margin, stage=stage)


def people(config: Config, stage: Stage = no_stage):
    """(the people gallery, its face recognizer, its decider) of `[people]`; the decider votes and
    cools down per person as [decision] says, "unknown" with [people]'s own cooldown. A gallery
    that cannot be opened is a ConfigError naming the field."""
    from ..recognize.faces import open_face_recognizer

    p, d = config.people, config.decision
    try:
        people = Gallery(p.gallery, create=False)
    except EdgeRetrievalError as e:
        raise ConfigError(f"people.gallery: {e}") from None
    try:
        recognizer = open_face_recognizer(
            people, threshold=p.threshold, threads=config.model.threads, stage=stage, min_face=p.min_face
        )
    except EdgeRetrievalError as e:
        people.close()
        raise ConfigError(f"people.gallery: {e}") from None
    except BaseException:
        people.close()
        raise
    decider = Decider(
        m=d.votes.m, n=d.votes.n, cooldown=d.cooldown, unknown=p.unknown, unknown_cooldown=p.unknown_cooldown
    )
    return people, recognizer, decider


def source(
    config: Config, stop: threading.Event, embedder, recognizer: Recognizer | None, *, full_frames: bool = False
):
    """The frame source. The whole-frame recognizer needs frames no larger than the model's input
    (a Motion-JPEG packet is then decoded smaller, and a snapshot decodes it again at full size);
    the regional ones, faces and the kiosk's view take full frames."""
    small = recognizer is not None and not recognizer.preset.regional and not config.people.gallery and not full_frames
    size = getattr(embedder, "input_size", None) if small else None
    return open_source(config.source, stop, decode_size=size, yield_to=getattr(embedder, "idle", None))


def sinks(config: Config) -> list:
    from ..sinks import build_sinks

    return build_sinks(config.sinks)


def fleet(config: Config, gallery: Gallery, embedder):
    """The fleet follower of `[fleet]`, started: it applies the group's versions to the gallery's file
    over its own connection (the service's sees them at its next generation check)."""
    from ..fleet.follower import Follower

    card = getattr(embedder, "card", None)
    return Follower(config.fleet, gallery.path, embedder.sha256, card.name if card else "").start()


def check_configured(config: Config) -> None:
    watched = config.gallery.path or config.people.gallery  # items, people or both
    missing = [k for k, v in (("source.uri", config.source.uri), ("gallery.path", watched)) if not v]
    if missing:
        raise ConfigError(
            f"{missing[0]}: not set (set source.uri and gallery.path or people.gallery, or neither for the "
            "built-in demo)"
        )


def demo(config: Config, embedder, folder: str, seed: int, stop: threading.Event | None = None) -> Config:
    """The config with the built-in demo's gallery (made in `folder`) and clip (from the cache),
    or the source configured: the demo gallery in front of a real camera (or an `exec:` program
    playing the clip)."""
    clip, db = democlip.prepare(embedder, folder, seed, stop, with_clip=not config.source.uri)
    if clip is None:
        log.info("built-in demo gallery %s; source %s", db, config.source.name or config.source.uri)
        return replace(config, gallery=replace(config.gallery, path=str(db)))
    log.info(
        "built-in demo: clip %s (items %s; %s shown but not enrolled), gallery %s",
        clip,
        ", ".join(democlip.SEQUENCE),
        ", ".join(democlip.HELD_OUT),
        db,
    )
    return replace(
        config,
        source=replace(config.source, uri=str(clip), name=config.source.name or "demo-clip"),
        gallery=replace(config.gallery, path=str(db)),
    )
