"""Several cameras on one device (systemd/edge-retrieval@.service): one service per camera, each
with its own config file, all on one gallery file. Two real services (Daemons in threads, each
its own model, gallery connection and ffmpeg camera) and a real local webhook."""

import json
import shutil
import threading
import time

import cv2
import fakes
import pytest

from edge_retrieval.config import load_config
from edge_retrieval.demo import photo
from edge_retrieval.enroll import enroll
from edge_retrieval.service.daemon import Daemon
from edge_retrieval.service.systemd import Notifier
from edge_retrieval.storage.events import EventLog
from edge_retrieval.storage.gallery import Gallery

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg absent (apt-get install ffmpeg; listed in .ci/apt-packages.txt)"
)
CAMERAS = {"front": "cat", "door": "coffee"}  # what each camera shows; only the cat is enrolled at first


class Webhook(fakes.Webhook):
    def labels(self, path: str) -> list[tuple[str, str]]:
        return [(event["label"], event["source"]) for event in self.events(path)]


def camera_config(tmp_path, name: str, shows: str, gallery, webhook: str):
    """/etc/edge-retrieval/<name>.toml as the template unit reads it: its camera (ffmpeg playing a
    photo at 10 fps as Motion-JPEG, standing in for rpicam-vid), the shared gallery, its webhook."""
    still = tmp_path / f"{shows}.png"
    cv2.imwrite(str(still), cv2.resize(cv2.imread(str(photo(shows))), (640, 480), interpolation=cv2.INTER_AREA))
    camera = f"exec:ffmpeg -nostdin -loglevel error -re -loop 1 -framerate 10 -i {still} -f mjpeg -q:v 3 -"
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"[source]\nuri = {json.dumps(camera)}\nname = {json.dumps(name)}\nfps = 10\n"
        f"[model]\nthreads = 1\n"
        f"[gallery]\npath = {json.dumps(str(gallery))}\n"
        f"[sinks.webhook]\nurl = {json.dumps(f'{webhook}/{name}')}\n"
        f"[snapshot]\nfolder = {json.dumps(str(tmp_path / 'snapshots'))}\n"
        f"[service]\nlog_interval = 0\n"
    )
    return load_config(path)


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_two_cameras_on_one_gallery_record_and_deliver_their_own_events_and_see_one_enrolment(embedder, tmp_path):
    db = tmp_path / "gallery.db"
    with Gallery(db) as gallery:
        enroll(gallery, embedder, [("cat", photo("cat"))])
    webhook = Webhook()
    stop = threading.Event()
    daemons = {
        name: Daemon(camera_config(tmp_path, name, shows, db, webhook.url), stop=stop, notifier=Notifier(None))
        for name, shows in CAMERAS.items()
    }
    summaries = {}
    threads = [
        threading.Thread(target=lambda n=name, d=daemon: summaries.__setitem__(n, d.run()), name=f"service {name}")
        for name, daemon in daemons.items()
    ]
    for thread in threads:
        thread.start()
    try:
        assert wait_for(lambda: webhook.labels("/front"), 60), "the front camera's cat never reached its webhook"
        assert wait_for(lambda: all(d.last_result is not None for d in daemons.values()), 30)
        # an enrolment while both run (as `edge-retrieval enroll` does, from its own connection)
        with Gallery(db) as gallery:
            enroll(gallery, embedder, [("coffee", photo("coffee"))])
            generation = gallery.generation()
        enrolled = time.monotonic()
        seen = {}
        while len(seen) < len(daemons) and time.monotonic() - enrolled < 5:
            for name, daemon in daemons.items():
                if name not in seen and daemon.pipeline.watches[0].gallery.seen_generation >= generation:
                    seen[name] = time.monotonic() - enrolled  # its frame loop reloaded the gallery
            time.sleep(0.01)
        assert wait_for(lambda: webhook.labels("/door"), 30), "the door camera's coffee never reached its webhook"
        time.sleep(1.0)  # anything else would have arrived by now
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        webhook.close()
    print(f"enrolment seen after (s): {seen}")
    assert set(seen) == set(daemons) and max(seen.values()) < 1.0, seen  # the live-gallery reload
    # each camera's events went to its own webhook only, once each
    assert webhook.labels("/front") == [("cat", "front")]
    assert webhook.labels("/door") == [("coffee", "door")]
    assert {name: s.reason for name, s in summaries.items()} == {"front": "stopped", "door": "stopped"}
    with EventLog(db, []) as log:
        events = sorted((e.source, e.label) for e in log.recent())
    assert events == [("door", "coffee"), ("front", "cat")]
