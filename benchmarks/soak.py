"""Soak: the real service for minutes on end; does memory, file descriptors, threads or speed drift?

Starts `edge-retrieval run` as systemd would (its own process, `NOTIFY_SOCKET` set) on the built-in
demo: the demo clip played in a loop (`source.loop = true`) as fast as the machine goes (or at the
clip's own 10 fps with `--realtime`), the real model, the demo gallery, the motion gate as
configured, a snapshot per alert (retention: the last 20) and every event delivered to the stdout
sink. Every `--every` seconds it samples the process from /proc/<pid>: resident memory (VmRSS),
open file descriptors (/proc/<pid>/fd), threads, and the frames handled (the WATCHDOG datagrams,
one per frame) since the last sample. It compares the last `--window` seconds with the first
`--window` seconds after `--warmup`:

  RSS growth      (last − first) ÷ first, each the median RSS of its window   target < 5 %
  fd growth       last − first, each the fewest fds seen in its window        target 0
  thread growth   last − first, each the fewest threads seen in its window    target 0
  fps ratio       last ÷ first, each the median fps of its samples            target ≥ 0.8

(medians and minima: a snapshot file open at the moment of a sample, or the churn of frame
buffers, is not a leak; a leaked descriptor, thread or buffer raises them all.)

then stops the service with SIGTERM (it must exit 0 within 2 s) and exits 1 if a target is
missed. Alerts and deliveries are counted (stderr "alert:" lines, stdout JSON lines).

    python benchmarks/soak.py                      # 10 minutes, a sample every 10 s, 60 s warm-up
    python benchmarks/soak.py --minutes 60 --json  # longer; the report as JSON

`tests/reliability/test_soak.py` runs the same code for ≈ 20 s (120 s with
EDGE_RETRIEVAL_RELIABILITY=full).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RSS_GROWTH_MAX = 0.05  # (end − after warm-up) ÷ after warm-up
FD_GROWTH_MAX = 0
THREAD_GROWTH_MAX = 0
FPS_RATIO_MIN = 0.8  # last window's fps ÷ first window's fps, after warm-up
STOP_WITHIN = 2.0  # seconds from SIGTERM to exit 0
READY_TIMEOUT = 180.0  # the first run renders the demo clip into the cache


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since READY
    rss_kb: int
    fds: int
    threads: int
    frames: int  # frames handled so far (WATCHDOG datagrams)
    fps: float  # frames handled per second since the previous sample


@dataclass
class Report:
    seconds: float
    warmup: float
    window: float
    samples: list[Sample]
    rss_start_kb: int = 0  # first sample after warm-up
    rss_end_kb: int = 0
    rss_growth: float = 0.0
    rss_first_kb: int = 0  # right after READY (before the warm-up)
    fds_start: int = 0
    fds_end: int = 0
    threads_start: int = 0
    threads_end: int = 0
    fps_first: float = 0.0
    fps_last: float = 0.0
    fps_ratio: float = 0.0
    frames: int = 0
    alerts: int = 0  # "alert:" lines in the service's log
    delivered: int = 0  # events the stdout sink printed
    exit_code: int | None = None
    stop_seconds: float = 0.0
    misses: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.misses


class NotifySocket:
    """The NOTIFY_SOCKET the service talks to: counts WATCHDOG pings, keeps the last STATUS."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.pings = 0
        self.status = ""
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify socket", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536).decode(errors="replace")
            except OSError:
                continue
            for line in data.splitlines():
                key, _, value = line.partition("=")
                if key == "WATCHDOG":
                    self.pings += 1
                elif key == "STATUS":
                    self.status = value
                elif key == "READY":
                    self.ready.set()
                elif key == "STOPPING":
                    self.stopping.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


def proc_status(pid: int) -> tuple[int, int, int]:
    """(VmRSS in kB, open file descriptors, threads) of a process, from /proc."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def service_command(work: Path, realtime: bool, extra: list[str]) -> list[str]:
    sets = {
        "source.loop": "true",
        "snapshot.enabled": "true",
        "snapshot.folder": str(work / "snapshots"),
        "snapshot.max_count": "20",
        "sinks.stdout": "true",
        "service.log_interval": "0",
    }
    if realtime:
        sets["source.realtime"] = "true"
    command = [sys.executable, "-m", "edge_retrieval.cli", "run"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command + extra


def windows(report: Report) -> tuple[list[Sample], list[Sample]]:
    """The samples of the first window after the warm-up and of the last window (fps is measured
    since the previous sample, so a window's first sample is the one after its start)."""
    samples = report.samples
    after = [s for s in samples if s.t >= report.warmup]
    if not after:
        return [], []
    start, end = after[0].t, samples[-1].t
    first = [s for s in after if s.t <= start + report.window + 1e-6]
    last = [s for s in after if s.t >= end - report.window - 1e-6]
    return first, last


def analyse(report: Report) -> Report:
    samples = report.samples
    first, last = windows(report)
    if len(first) < 2 or len(last) < 2 or last[0].t <= first[0].t:
        report.misses.append(
            f"too few samples after the {report.warmup:g} s warm-up for two {report.window:g} s "
            f"windows ({len(samples)} in all)"
        )
        return report
    report.rss_first_kb = samples[0].rss_kb
    report.rss_start_kb = int(statistics.median(s.rss_kb for s in first))
    report.rss_end_kb = int(statistics.median(s.rss_kb for s in last))
    report.rss_growth = (report.rss_end_kb - report.rss_start_kb) / report.rss_start_kb
    report.fds_start, report.fds_end = min(s.fds for s in first), min(s.fds for s in last)
    report.threads_start, report.threads_end = min(s.threads for s in first), min(s.threads for s in last)
    report.fps_first = statistics.median(s.fps for s in first[1:])
    report.fps_last = statistics.median(s.fps for s in last[1:])
    report.fps_ratio = report.fps_last / report.fps_first if report.fps_first else 0.0
    report.frames = samples[-1].frames
    if report.rss_growth >= RSS_GROWTH_MAX:
        report.misses.append(f"RSS grew {report.rss_growth:.1%} (target < {RSS_GROWTH_MAX:.0%})")
    if report.fds_end - report.fds_start > FD_GROWTH_MAX:
        report.misses.append(f"file descriptors grew by {report.fds_end - report.fds_start} (target {FD_GROWTH_MAX})")
    if report.threads_end - report.threads_start > THREAD_GROWTH_MAX:
        report.misses.append(
            f"threads grew by {report.threads_end - report.threads_start} (target {THREAD_GROWTH_MAX})"
        )
    if report.fps_ratio < FPS_RATIO_MIN:
        report.misses.append(f"fps fell to {report.fps_ratio:.2f} of the first window's (target ≥ {FPS_RATIO_MIN})")
    if report.exit_code != 0:
        report.misses.append(f"the service exited with {report.exit_code} on SIGTERM")
    elif report.stop_seconds > STOP_WITHIN:
        report.misses.append(f"the service took {report.stop_seconds:.1f} s to stop (target ≤ {STOP_WITHIN:g} s)")
    return report


def soak(
    seconds: float,
    *,
    every: float = 10.0,
    warmup: float = 60.0,
    window: float = 60.0,
    realtime: bool = False,
    extra: list[str] | None = None,
    workdir: str | Path | None = None,
    progress=None,
) -> Report:
    """Run the service for `seconds` after READY, sampling every `every` s; the analysed Report."""
    temp = None
    if workdir is None:
        temp = tempfile.TemporaryDirectory(prefix="edge-retrieval-soak-")
        workdir = temp.name
    work = Path(workdir)
    notify = NotifySocket(work / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    report = Report(seconds=seconds, warmup=warmup, window=window, samples=[])
    with open(work / "stdout.jsonl", "wb") as out, open(work / "stderr.log", "wb") as err:
        proc = subprocess.Popen(service_command(work, realtime, extra or []), stdout=out, stderr=err, env=env, cwd=work)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not notify.ready.wait(0.2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the service did not become ready (exit {proc.poll()}): "
                        + (work / "stderr.log").read_text()[-2000:]
                    )
            t0 = last_t = time.monotonic()
            last_frames = notify.pings
            next_at = t0
            while True:
                now = time.monotonic()
                frames = notify.pings
                rss, fds, threads = proc_status(proc.pid)
                fps = (frames - last_frames) / (now - last_t) if now > last_t else 0.0
                sample = Sample(round(now - t0, 2), rss, fds, threads, frames, round(fps, 2))
                report.samples.append(sample)
                if progress is not None:
                    progress(sample)
                last_t, last_frames = now, frames
                if now - t0 >= seconds - 1e-6 or proc.poll() is not None:
                    break
                next_at += every
                time.sleep(max(0.0, min(next_at, t0 + seconds) - time.monotonic()))
            if proc.poll() is not None:
                report.misses.append(f"the service died during the soak (exit {proc.returncode})")
            stop = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                report.exit_code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                report.exit_code = proc.wait()
            report.stop_seconds = round(time.monotonic() - stop, 2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            notify.close()
    log = (work / "stderr.log").read_text(errors="replace")
    report.alerts = sum("alert: " in line for line in log.splitlines())
    report.delivered = sum(1 for line in (work / "stdout.jsonl").read_text().splitlines() if line.startswith("{"))
    if temp is not None:
        temp.cleanup()
    return analyse(report)


def table(report: Report) -> str:
    rows = ["     t s   RSS MB   fds  threads    frames     fps"]
    for s in report.samples:
        mark = "" if s.t >= report.warmup else "  (warm-up)"
        rows.append(f"{s.t:8.0f} {s.rss_kb / 1024:8.1f} {s.fds:5d} {s.threads:8d} {s.frames:9d} {s.fps:7.1f}{mark}")
    return "\n".join(rows)


def summary(report: Report) -> str:
    mb = 1024
    return "\n".join(
        [
            f"duration {report.seconds / 60:.1f} min, warm-up {report.warmup:g} s, {report.frames} frames, "
            f"{report.alerts} alerts, {report.delivered} delivered (stdout sink)",
            f"RSS      {report.rss_first_kb / mb:.1f} MB at READY, {report.rss_start_kb / mb:.1f} MB in the first "
            f"window, {report.rss_end_kb / mb:.1f} MB in the last: {report.rss_growth:+.2%} "
            f"(target < {RSS_GROWTH_MAX:.0%})",
            f"fds      {report.fds_start} → {report.fds_end} (target +{FD_GROWTH_MAX})",
            f"threads  {report.threads_start} → {report.threads_end} (target +{THREAD_GROWTH_MAX})",
            f"fps      first {report.window:g} s {report.fps_first:.1f}, last {report.window:g} s {report.fps_last:.1f}: "
            f"ratio {report.fps_ratio:.2f} (target ≥ {FPS_RATIO_MIN})",
            f"stop     exit {report.exit_code} after {report.stop_seconds:.2f} s (target 0 within {STOP_WITHIN:g} s)",
            "result   " + ("all targets met" if report.ok else "MISSED: " + "; ".join(report.misses)),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration after READY (default 10)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline sample (default 60)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of the first/last fps windows (default 60)")
    parser.add_argument("--realtime", action="store_true", help="play the clip at its own 10 fps, as a camera")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed on to `edge-retrieval run --set`",
    )
    args = parser.parse_args(argv)
    extra = [x for kv in args.sets for x in ("--set", kv)]
    quiet = args.json
    report = soak(
        args.minutes * 60,
        every=args.every,
        warmup=args.warmup,
        window=args.window,
        realtime=args.realtime,
        extra=extra,
        progress=None
        if quiet
        else (
            lambda s: print(
                f"  {s.t:6.0f} s  RSS {s.rss_kb / 1024:7.1f} MB  "
                f"fds {s.fds:3d}  threads {s.threads:3d}  "
                f"{s.fps:6.1f} fps",
                flush=True,
            )
        ),
    )
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=1))
    else:
        print(table(report))
        print(summary(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
