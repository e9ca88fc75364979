"""Soak, the CI-sized run of benchmarks/soak.py: the real service process on the looping demo clip
(real model, demo gallery, motion gate, snapshots with retention, the stdout sink), sampled from
/proc: memory, file descriptors and threads must not grow, speed must not fall, SIGTERM must end
it cleanly. ≈ 20 s here; 120 s with EDGE_RETRIEVAL_RELIABILITY=full; 10 minutes with
`python benchmarks/soak.py` (benchmarks/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from budget import budget

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import soak  # noqa: E402

SECONDS = budget(20, 120)
EVERY = budget(2, 5)
WARMUP = budget(6, 30)  # the first loops: SQLite pages, snapshot retention reaching its count, allocator pools
WINDOW = budget(5, 30)
# Named tolerances where a short run on 2 shared cores is noisier than the 10-minute benchmark:
FPS_RATIO_MIN = 0.5  # the benchmark's target is soak.FPS_RATIO_MIN (0.8) over 60 s windows
DELIVERY_LAG = 3  # events the stdout sink may not have printed yet at SIGTERM (delivered at the next start)


def test_soak_memory_fds_threads_and_fps_hold(tmp_path):
    report = soak.soak(SECONDS, every=EVERY, warmup=WARMUP, window=WINDOW, workdir=tmp_path)
    table = soak.table(report) + "\n" + soak.summary(report)
    first, last = soak.windows(report)
    assert len(first) >= 2 and len(last) >= 2, table
    assert report.rss_growth < soak.RSS_GROWTH_MAX, table
    assert report.fds_end - report.fds_start <= soak.FD_GROWTH_MAX, table
    assert report.threads_end - report.threads_start <= soak.THREAD_GROWTH_MAX, table
    assert report.fps_ratio >= FPS_RATIO_MIN, table
    assert report.exit_code == 0 and report.stop_seconds <= soak.STOP_WITHIN, table
    assert report.frames > 5 * SECONDS, table  # it really ran (≈ 100+ fps here)
    assert report.alerts >= SECONDS // 10, table  # the demo items alert on every loop of the clip
    assert report.alerts - DELIVERY_LAG <= report.delivered <= report.alerts, table
