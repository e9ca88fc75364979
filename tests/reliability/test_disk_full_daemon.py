"""Disk full, the daemon's half: the snapshot folder's filesystem fills up while the service runs.

Guarantee: matching and alerting go on (every decision is recorded as an event and delivered to
the sinks), the snapshot of an alert that cannot be written is dropped without leaving a partial
file behind, this is said once (one warning, a count in STATUS/stats, not a warning per alert),
and snapshots are saved again as soon as there is space.

Two ways to fill a disk, the same scenario and the same assertions:
- `tmpfs`: a real 1 MB tmpfs mounted for the test (needs root, or CAP_SYS_ADMIN), filled to the
  last byte: writes fail with ENOSPC;
- `rlimit`: no mount needed: the scenario runs in a child process whose RLIMIT_FSIZE (with
  SIGXFSZ ignored) is lowered below a snapshot's size while "full": writes fail with EFBIG.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # the rlimit child: find the package and the test helpers like pytest does
    sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]

from budget import budget  # noqa: E402
from fakes import BACKGROUND, FakeEmbedder, fake_vector  # noqa: E402

from edge_retrieval.camera import Frame, SourceEnded  # noqa: E402
from edge_retrieval.config import Config, DecisionConfig, MotionConfig, ServiceConfig, VotesConfig  # noqa: E402
from edge_retrieval.service.daemon import Daemon  # noqa: E402
from edge_retrieval.service.metrics import SNAPSHOT_LOST  # noqa: E402
from edge_retrieval.service.systemd import Notifier  # noqa: E402
from edge_retrieval.sinks import SnapshotConfig  # noqa: E402
from edge_retrieval.storage.events import EventLog  # noqa: E402
from edge_retrieval.storage.gallery import Gallery  # noqa: E402

B = BACKGROUND
TMPFS_SIZE = "1m"
SMALL_FRAME = (240, 320)  # noise: a ≈ 60 KB JPEG, a handful fit on the tmpfs
BIG_FRAME = (1080, 1920)  # noise: a ≈ 1.6 MB JPEG, above the "full" file size limit of the rlimit variant
FULL_FSIZE = 1 << 20  # RLIMIT_FSIZE while "full" (the gallery file and its WAL stay below it)
# The limit holds for every file the child writes, the gallery's WAL too (≈ 35 KB an event until a
# checkpoint): the rlimit variant keeps its full phase this short so only the snapshots hit it.
RLIMIT_MAX_FULL_ALERTS = 15


class ListSink:
    name = "list"

    def __init__(self):
        self.payloads = []

    def deliver(self, payload):
        self.payloads.append(payload)

    def close(self):
        pass


class Script:
    """A FrameSource over a script of fake codes and callables (called between two frames)."""

    name, live = "cam", False

    def __init__(self, steps, shape):
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        self.images = {}
        for code in {s for s in steps if isinstance(s, int)}:
            image = noise.copy()  # the fake embedder reads pixel (0, 0); the noise makes JPEGs big
            image[0, 0] = code * 30
            self.images[code] = image
        self.steps, self.index = list(steps), 0

    def read(self, timeout=0.5):
        while self.steps and callable(self.steps[0]):
            self.steps.pop(0)()
        if not self.steps:
            raise SourceEnded(self.name)
        code = self.steps.pop(0)
        self.index += 1
        return Frame(self.images[code], self.index * 0.1, self.index - 1)

    def close(self):
        pass


def scenario(workdir: Path, folder: Path, fill, free, full_alerts: int, shape) -> dict:
    """Two alerts with space, `full_alerts` while the disk is full, two after space returns."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("edge_retrieval").addHandler(handler)
    try:
        gallery = Gallery(workdir / "fake.db")
        for code in range(4):
            gallery.add(f"item{code}", fake_vector(code), model_sha256=FakeEmbedder.sha256)

        def alerts(n, first):
            steps, labels = [], []
            for i in range(n):
                code = 1 + (first + i) % 3
                steps += [code] * 3 + [B] * 2
                labels.append(f"item{code}")
            return steps, labels

        before, expected = alerts(2, 0)
        during, more = alerts(full_alerts, 2)
        after, last = alerts(2, 2 + full_alerts)
        config = Config(
            decision=DecisionConfig(
                preset="whole", threshold=0.5, margin=0.05, votes=VotesConfig(m=2, n=3), cooldown=0.2
            ),
            motion=MotionConfig(enabled=False),  # frames differ only in the pixel the fake reads
            service=ServiceConfig(status_interval=0.1, log_interval=0),
            snapshot=SnapshotConfig(enabled=True, folder=str(folder), max_count=100),
        )
        sink = ListSink()
        daemon = Daemon(
            config,
            embedder=FakeEmbedder(),
            gallery=gallery,
            sinks=[sink],
            source=Script([B, B] + before + [fill] + during + [free] + after, shape),
            notifier=Notifier(None),
        )
        summary = daemon.run()
        with EventLog(gallery.path, []) as log:
            events = [(e.label, e.snapshot) for e in reversed(log.recent(1000))]
        gallery.close()
        return {
            "reason": summary.reason,
            "expected": expected + more + last,
            "phases": [len(expected), len(more), len(last)],
            "decisions": [d.label for d in summary.decisions],
            "events": events,
            "delivered": [p["label"] for p in sink.payloads],
            "snapshots_exist": [bool(s) and Path(s).is_file() for _, s in events],
            "warnings": [r.getMessage() for r in records],
            "lost": daemon.metrics.counts[SNAPSHOT_LOST],
            "status": daemon.status_text(daemon.metrics),
            "leftovers": sorted(p.name for p in folder.iterdir() if not p.name.startswith("event-")),
        }
    finally:
        logging.getLogger("edge_retrieval").removeHandler(handler)


# -- the two ways to fill the disk ---------------------------------------------------------------
def run_on_tmpfs(tmp_path: Path, full_alerts: int) -> dict:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
            "the rlimit variant covers the same scenario"
        )
    try:
        folder = mount / "snapshots"
        folder.mkdir()
        filler = mount / "filler"

        def fill():
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC
            small = mount / "probe"
            with pytest.raises(OSError):  # not a byte left
                with open(small, "wb") as f:
                    f.write(b"x" * 4096)
                    f.flush()
                    os.fsync(f.fileno())
            small.unlink()

        def free():
            filler.unlink()

        return scenario(tmp_path, folder, fill, free, full_alerts, SMALL_FRAME)
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def rlimit_child(workdir: str, full_alerts: int) -> None:
    """In the child: the same scenario, "full" = RLIMIT_FSIZE below a snapshot's size."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def fill():
        resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_FSIZE, hard))

    def free():
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    folder = Path(workdir) / "snapshots"
    folder.mkdir()
    result = scenario(Path(workdir), folder, fill, free, full_alerts, BIG_FRAME)
    print(json.dumps(result))


def run_with_rlimit(tmp_path: Path, full_alerts: int) -> dict:
    full_alerts = min(full_alerts, RLIMIT_MAX_FULL_ALERTS)
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(full_alerts)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("disk", ["tmpfs", "rlimit"])
def test_a_full_snapshot_disk_loses_pictures_not_alerts_says_so_once_and_recovers(tmp_path, disk):
    full_alerts = budget(5, 50)
    work = tmp_path / uuid.uuid4().hex[:8]
    work.mkdir()
    result = (run_on_tmpfs if disk == "tmpfs" else run_with_rlimit)(work, full_alerts)

    n_before, n_full, n_after = result["phases"]
    assert n_full == (full_alerts if disk == "tmpfs" else min(full_alerts, RLIMIT_MAX_FULL_ALERTS))
    # matching and alerting go on: every decision recorded and delivered
    assert result["reason"] == "ended"
    assert result["decisions"] == result["expected"]
    assert [label for label, _ in result["events"]] == result["expected"]
    assert result["delivered"] == result["expected"]
    # the snapshots: saved, dropped while full, saved again
    saved = result["snapshots_exist"]
    assert saved == [True] * n_before + [False] * n_full + [True] * n_after
    assert all(path is None for _, path in result["events"][n_before : n_before + n_full])
    assert result["leftovers"] == []  # no partial file left taking space
    # said once, counted, and said when it recovers
    lost = [w for w in result["warnings"] if "snapshot not saved" in w]
    again = [w for w in result["warnings"] if "snapshots saved again" in w]
    assert len(lost) == 1 and len(again) == 1, result["warnings"]
    assert f"({n_full} not saved meanwhile)" in again[0]
    assert result["lost"] == n_full
    assert f"{n_full} {SNAPSHOT_LOST}" in result["status"]
    assert len(result["warnings"]) == 2, result["warnings"]  # nothing else complained


if __name__ == "__main__":
    rlimit_child(sys.argv[1], int(sys.argv[2]))
