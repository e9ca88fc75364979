"""A fleet on loopback: N followers (the fleet component alone, no camera) apply one published
1,000-item watchlist; the time from publish to the last one applied, and the bytes on the wire.

Starts a Mosquitto of its own on a free port (`$SYS` every second: the broker's byte counters),
builds a gallery of `--items` items (one 256-d int8 embedding and one set of 500 ORB features
each, as `enroll` stores a photo; random values of the right shape), runs the followers in
`--processes` processes (each its own gallery file and MQTT connection) and publishes once.

    python benchmarks/fleet.py [--followers 50] [--items 1000] [--processes 2] [--no-features]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from edge_retrieval.fleet import FleetConfig, load_key
from edge_retrieval.fleet.follower import Follower
from edge_retrieval.fleet.wire import publish
from edge_retrieval.storage.gallery import Gallery

SHA = "0" * 64  # the model the synthetic gallery belongs to (the followers expect it)


def build(path: Path, items: int, features: bool) -> None:
    rng = np.random.default_rng(0)
    with Gallery(path) as g, g.transaction():
        for i in range(items):
            v = rng.normal(size=256)
            item = g.add(f"item{i:04d}", v / np.linalg.norm(v), model_sha256=SHA, model_name="bench")
            if features:
                points = rng.uniform(0, 480, size=(500, 2)).astype(np.float32)
                g.add_features(item, "orb", (640, 480), points, rng.integers(0, 256, (500, 32), np.uint8))


def followers(config: FleetConfig, folder: str, names: list[str], ready, results) -> None:
    """One process's followers: say ready, then report (device, wall time applied) for each."""
    running = [
        Follower(FleetConfig(**{**vars(config), "device_id": n}), Path(folder) / f"{n}.db", SHA).start() for n in names
    ]
    ready.put(len(running))
    for f in running:
        f.wait_for(1, 600)
        results.put((f.device, f.applied.get("applied")))
    for f in running:
        f.close()


def broker_bytes(port: int) -> tuple[int, int]:
    """(received, sent) by the broker so far ($SYS, updated every second)."""
    got: dict[str, int] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, u, m: got.__setitem__(m.topic.rsplit("/", 1)[1], int(m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe([("$SYS/broker/bytes/received", 0), ("$SYS/broker/bytes/sent", 0)])
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    return got.get("received", 0), got.get("sent", 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--followers", type=int, default=50)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--no-features", action="store_true", help="embeddings only (the whole-frame preset's gallery)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="fleet-bench-")
    folder = Path(tmp.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nsys_interval 1\nlog_dest none\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([binary, "-c", str(conf)])
    try:
        key = folder / "fleet.key"
        key.write_text(os.urandom(32).hex())
        key.chmod(0o600)
        config = FleetConfig(group="bench", port=port, key_file=str(key), timeout_s=60, max_payload_mb=256)
        gallery = folder / "watchlist.db"
        started = time.perf_counter()
        build(gallery, args.items, not args.no_features)
        print(f"gallery: {args.items} items built in {time.perf_counter() - started:.1f} s")
        ctx = mp.get_context("spawn")
        ready, results = ctx.Queue(), ctx.Queue()
        names = [f"dev{i:03d}" for i in range(args.followers)]
        procs = [
            ctx.Process(target=followers, args=(config, tmp.name, names[p :: args.processes], ready, results))
            for p in range(args.processes)
        ]
        for p in procs:
            p.start()
        assert sum(ready.get(timeout=120) for _ in procs) == args.followers
        time.sleep(2)  # connected and subscribed; the $SYS counters settled
        received0, sent0 = broker_bytes(port)
        t0 = time.time()
        head = publish(config, gallery, load_key(key))
        published = time.time() - t0
        applied = dict(results.get(timeout=900) for _ in names)
        times = sorted(t - t0 for t in applied.values() if t is not None)
        time.sleep(2.5)  # two $SYS intervals
        received1, sent1 = broker_bytes(port)
        for p in procs:
            p.join(60)
        payload = head["size"]
        print(
            f"watchlist: {head['items']} items, {payload / 1e6:.2f} MB in {head['chunks']} messages; "
            f"published (every chunk acknowledged) in {published:.2f} s"
        )
        print(
            f"{len(times)}/{args.followers} followers applied it: first {times[0]:.2f} s, median "
            f"{statistics.median(times):.2f} s, last {times[-1]:.2f} s after the publish began "
            f"({args.processes} processes, {os.cpu_count()} cores)"
        )
        print(
            f"broker bytes: received {(received1 - received0) / 1e6:.1f} MB, sent {(sent1 - sent0) / 1e6:.1f} MB "
            f"= {(sent1 - sent0) / max(1, payload * args.followers):.3f} × payload × followers"
        )
    finally:
        broker.terminate()
        broker.wait(10)
        tmp.cleanup()


if __name__ == "__main__":
    main()
