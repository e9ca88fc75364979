"""The events page and its API on real parts: a real service run (the Daemon, the real model) on a
rendered clip records events with snapshots and descriptors into a real gallery file; the real
kiosk server serves them on an ephemeral loopback port; (marked `browser`) a real headless
Chromium drives the page. Screenshots go to $EDGE_RETRIEVAL_ARTIFACTS (tests/artifacts.py)."""

from __future__ import annotations

import http.client
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from artifacts import artifacts
from test_kiosk import BAD_UPLOADS, TOKEN, api, browser, request, tiny_png, wait_for  # noqa: F401 (browser: a fixture)

from edge_retrieval import democlip
from edge_retrieval.config import Config, DecisionConfig, GalleryConfig, KioskConfig, SourceConfig
from edge_retrieval.demo import photo
from edge_retrieval.enroll import enroll
from edge_retrieval.kiosk import Kiosk, Server
from edge_retrieval.service.daemon import Daemon
from edge_retrieval.service.systemd import Notifier
from edge_retrieval.sinks import SnapshotConfig
from edge_retrieval.storage.events import EventLog
from edge_retrieval.storage.gallery import Gallery

# the cat and the coffee twice each, the never-enrolled tissue between them (≈ 35 s at 10 fps)
SEQUENCE = ("cat", "coffee", "tissue", "cat", "coffee")


def service_config(clip: Path, gallery: Path, snapshots: Path) -> Config:
    """The service as a door camera would run it: snapshots, unknown events, a short cooldown
    (the clip shows each item again within seconds)."""
    return Config(
        source=SourceConfig(uri=str(clip), name="door"),
        gallery=GalleryConfig(path=str(gallery)),
        snapshot=SnapshotConfig(enabled=True, folder=str(snapshots)),
        decision=DecisionConfig(cooldown=1.0, unknown=True),
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, embedder):
    """A gallery file whose events come from a real service run over the clip."""
    folder = tmp_path_factory.mktemp("events")
    clip = democlip.DemoClip(0, sequence=SEQUENCE).write(folder / "clip.avi")
    gallery = folder / "gallery.db"
    with Gallery(gallery) as g:
        enroll(g, embedder, [(name, photo(name)) for name in ("cat", "coffee", "astronaut", "coins")])
    summary = Daemon(
        service_config(clip, gallery, folder / "snapshots"), embedder=embedder, notifier=Notifier(None)
    ).run()
    labels = [d.label for d in summary.decisions if d.kind == "match"]
    assert labels == ["cat", "coffee", "cat", "coffee"], labels
    assert any(d.kind == "unknown" for d in summary.decisions)
    return folder


@pytest.fixture(scope="module")
def server(recorded):
    """The kiosk's server on the gallery file; its own camera is a still photo of the wall (no events)."""
    camera = recorded / "camera"
    camera.mkdir()
    cv2.imwrite(str(camera / "frame.jpg"), cv2.imread(str(photo("brick"))))
    config = Config(
        source=SourceConfig(uri=str(camera), fps=2.0, name="still"),
        gallery=GalleryConfig(path=str(recorded / "gallery.db")),
        kiosk=KioskConfig(token=TOKEN, port=0, max_upload_mb=1.0),
    )
    server = Server(Kiosk(config).open(), "127.0.0.1", 0).start()
    yield server
    server.stop()


def base_of(server) -> str:
    return server.url.rstrip("/")


def events(base: str, query: str = "") -> list[dict]:
    status, data = api(base, "GET", "/api/events?limit=200" + query, token=TOKEN)
    assert status == 200, data
    return data["events"]


# -- access ------------------------------------------------------------------------------------


def test_reading_events_needs_the_token_and_the_kiosk_page_stays_open(server):
    base = base_of(server)
    first = events(base)[0]
    for path in ("/api/events", f"/api/events/{first['id']}", first["snapshot"], f"/api/events/{first['id']}/similar"):
        status, data = api(base, "GET", path)
        assert status == 401 and "staff token" in data["error"], path
        assert api(base, "GET", path, token="wrong-token-0000")[0] == 403, path
    status, data = api(base, "POST", "/api/events/search", photo("cat").read_bytes(), content_type="image/jpeg")
    assert status == 401
    # the cookie /events?token= sets opens the pictures (an <img> sends no header); a wrong one does not
    status, _, jpeg = request(base, "GET", first["snapshot"], headers={"Cookie": f"kiosk_token={TOKEN}"})
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    assert request(base, "GET", first["snapshot"], headers={"Cookie": "kiosk_token=guess-0000"})[0] == 403
    # another site's page cannot read them, token or not
    headers = {"Origin": "http://evil.example"}
    assert api(base, "GET", "/api/events", token=TOKEN, headers=headers)[0] == 403
    assert api(base, "GET", "/api/events", token=TOKEN, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    # the page itself: refused without the token, the link's token sets the cookie for the page and its API
    status, _, page = request(base, "GET", "/events")
    assert status == 401 and b"needs the token" in page
    assert request(base, "GET", "/events?token=wrong-token-0000")[0] == 403
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/events?token={TOKEN}")
    r = conn.getresponse()
    cookies = r.headers.get_all("set-cookie")
    assert r.status == 303 and r.getheader("location") == "/events"
    assert sorted(c.split("Path=")[1].split(";")[0] for c in cookies) == ["/api/events", "/events"]
    assert all("HttpOnly" in c and "SameSite=strict" in c for c in cookies), cookies
    conn.close()
    status, headers, page = request(base, "GET", "/events", headers={"Cookie": f"kiosk_token={TOKEN}"})
    assert status == 200 and b"/static/events.js" in page and "default-src 'self'" in headers["content-security-policy"]
    # the visitors' kiosk page and its state stay open
    assert request(base, "GET", "/")[0] == 200 and api(base, "GET", "/api/state")[0] == 200
    # a loopback server answers only loopback names (DNS rebinding)
    assert request(base, "GET", "/api/events", token=TOKEN, headers={"Host": "evil.example"})[0] == 421


# -- list, filters, pages, detail ----------------------------------------------------------------


def test_the_list_is_newest_first_filtered_and_paged(server):
    base = base_of(server)
    everything = events(base)
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True) and len(ids) >= 5
    assert [e["label"] for e in everything if e["kind"] == "match"] == ["coffee", "cat", "coffee", "cat"]

    matches = events(base, "&kind=match")
    assert [e["id"] for e in matches] == [e["id"] for e in everything if e["kind"] == "match"]
    unknown = events(base, "&kind=unknown")
    assert unknown and all(e["kind"] == "unknown" and e["label"] is None for e in unknown)
    assert [e["label"] for e in events(base, "&label=cat")] == ["cat", "cat"]
    assert len(events(base, "&source=door")) == len(everything) and events(base, "&source=elsewhere") == []
    t = sorted(e["time"] for e in everything)
    middle = events(base, f"&since={t[1]}&until={t[-1]}")  # since inclusive, until exclusive
    assert sorted(e["time"] for e in middle) == t[1:-1]

    # keyset pages of 2: together the whole list, in order, nothing twice
    seen, before = [], ""
    while True:
        status, page = api(base, "GET", f"/api/events?limit=2{before}", token=TOKEN)
        assert status == 200 and len(page["events"]) <= 2 and page["latest"] == ids[0]
        seen += [e["id"] for e in page["events"]]
        if page["next"] is None:
            break
        before = f"&before={page['next']}"
    assert seen == ids


@pytest.mark.parametrize(
    "query, words",
    [
        ("kind=maybe", "kind: one of match, unknown"),
        ("limit=0", "limit: an integer from 1"),
        ("limit=lots", "limit: an integer from 1"),
        ("before=-3", "before: an integer"),
        ("since=yesterday", "since: a time in seconds"),
        ("until=nan", "until: a time in seconds"),
        ("colour=red", "colour: unknown parameter"),
    ],
)
def test_bad_queries_get_clear_400s(server, query, words):
    status, data = api(base_of(server), "GET", "/api/events?" + query, token=TOKEN)
    assert status == 400 and words in data["error"]


def test_an_event_s_detail_has_what_the_page_draws(server):
    base = base_of(server)
    cat = events(base, "&label=cat")[0]
    status, event = api(base, "GET", f"/api/events/{cat['id']}", token=TOKEN)
    assert status == 200 and event["kind"] == "match" and event["label"] == "cat" and event["source"] == "door"
    assert event["score"] > event["threshold"] > 0 and event["margin"] > 0
    assert event["votes"] >= 3 and event["window"] == 5 and event["inliers"] > 10
    assert len(event["polygon"]) == 4  # the verified outline, frame pixels
    assert event["item"]["label"] == "cat" and event["item"]["photo"].startswith(f"/api/items/{event['item_id']}/photo")
    status, headers, jpeg = request(base, "GET", event["snapshot"], token=TOKEN)
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
    assert request(base, "GET", event["item"]["photo"])[0] == 200  # the enrolled photo beside it
    assert api(base, "GET", "/api/events/999999", token=TOKEN)[0] == 404
    assert api(base, "GET", "/api/events/99999999999999999999999", token=TOKEN)[0] == 404
    assert api(base, "GET", "/api/events/999999/snapshot.jpg", token=TOKEN)[0] == 404


# -- search by example ----------------------------------------------------------------------------


def test_similar_events_rank_the_same_item_first(server):
    base = base_of(server)
    for label in ("cat", "coffee"):
        mine = [e["id"] for e in events(base, f"&label={label}")]
        for event_id in mine:
            status, data = api(base, "GET", f"/api/events/{event_id}/similar", token=TOKEN)
            assert status == 200
            ranked = data["results"]
            assert event_id not in [r["id"] for r in ranked]
            assert [r["id"] for r in ranked[: len(mine) - 1]] == [i for i in mine if i != event_id], (label, ranked)
            assert ranked[0]["similarity"] > 0.6 > ranked[len(mine) - 1]["similarity"]
    # an uploaded photo of the cat: the cat's events first, with filters
    status, data = api(
        base, "POST", "/api/events/search?top_k=3", photo("cat").read_bytes(), token=TOKEN, content_type="image/jpeg"
    )
    assert status == 200 and len(data["results"]) == 3
    assert [r["label"] for r in data["results"][:2]] == ["cat", "cat"]
    status, data = api(
        base,
        "POST",
        "/api/events/search?kind=unknown",
        photo("cat").read_bytes(),
        token=TOKEN,
        content_type="image/jpeg",
    )
    assert status == 200 and data["results"] and {r["kind"] for r in data["results"]} == {"unknown"}


@BAD_UPLOADS
def test_bad_uploads_get_clear_4xx_errors(server, body, status, words):
    code, data = api(base_of(server), "POST", "/api/events/search", body, token=TOKEN, content_type="image/jpeg")
    assert code == status and words in data["error"]


# -- the staff's answers --------------------------------------------------------------------------


def test_enrol_the_crop_and_this_is_not_x(server, recorded):
    base = base_of(server)
    cat = events(base, "&label=cat")[0]
    coffee = events(base, "&label=coffee")[0]
    path = f"/api/events/{cat['id']}/enrol"
    assert api(base, "POST", path, {"label": "cat"})[0] == 401
    assert api(base, "POST", path, {"label": "cat"}, token="wrong-token-0000")[0] == 403
    assert api(base, "POST", path, {"label": "cat"}, token=TOKEN, headers={"Origin": "http://evil.example"})[0] == 403
    with Gallery(recorded / "gallery.db") as g:
        before = g.item("cat").embeddings
    status, data = api(base, "POST", path, {"label": "cat"}, token=TOKEN)
    assert status == 201 and data["item"]["label"] == "cat" and data["item"]["embeddings"] == before + 1
    saved = sorted((recorded / "gallery-photos").glob("cat-*.jpg"))
    assert len(saved) == 1
    crop = cv2.imread(str(saved[0]))
    xs, ys = zip(*cat["polygon"])  # the outline's bounding box, within the frame
    width = min(640, max(xs)) - max(0, min(xs))
    height = min(480, max(ys)) - max(0, min(ys))
    assert abs(crop.shape[1] - width) <= 2 and abs(crop.shape[0] - height) <= 2
    green = (crop[..., 1].astype(int) - crop[..., [0, 2]].max(axis=2)) > 100  # the drawn outline: painted out
    assert green.mean() < 0.002, green.mean()
    with Gallery(recorded / "gallery.db") as g:  # enrolled as `enroll` does: verifiable
        assert [f[0] for f in g.features(g.item("cat").id)] == ["orb", "sift", "gray"] * 2

    path = f"/api/events/{coffee['id']}/not"
    assert api(base, "POST", path, {"label": "coins"})[0] == 401
    with Gallery(recorded / "gallery.db") as g:
        negatives = len(g.negatives()[0])
    status, data = api(base, "POST", path, {"label": "coins"}, token=TOKEN)
    assert status == 200 and data["item"]["label"] == "coins" and data["negatives"] == 1
    with Gallery(recorded / "gallery.db") as g:
        ids, _ = g.negatives()
        assert len(ids) == negatives + 1 and ids[-1] == g.item("coins").id
    assert api(base, "POST", path, {"label": "no such item"}, token=TOKEN)[0] == 404
    assert api(base, "POST", path, {"label": ""}, token=TOKEN)[0] == 400
    assert api(base, "POST", path, {"label": "coins", "why": 1}, token=TOKEN)[0] == 400
    assert api(base, "POST", f"/api/events/{coffee['id']}/promote", {"label": "x"}, token=TOKEN)[0] == 404
    assert api(base, "POST", "/api/events/999999/enrol", {"label": "cat"}, token=TOKEN)[0] == 404


def test_delete_takes_the_row_the_descriptor_and_the_snapshot(server, recorded):
    base = base_of(server)
    victim = events(base, "&kind=unknown")[-1]
    path = f"/api/events/{victim['id']}"
    assert api(base, "DELETE", path)[0] == 401
    assert api(base, "DELETE", path, token="wrong-token-0000")[0] == 403
    assert api(base, "DELETE", path, token=TOKEN, headers={"Origin": "http://evil.example"})[0] == 403
    with EventLog(recorded / "gallery.db", []) as log:
        snapshot = Path(log.event(victim["id"]).snapshot)
    assert snapshot.is_file()
    status, data = api(base, "DELETE", path, token=TOKEN)
    assert status == 200 and data == {"deleted": victim["id"]}
    assert api(base, "GET", path, token=TOKEN)[0] == 404 and api(base, "DELETE", path, token=TOKEN)[0] == 404
    assert not snapshot.exists()
    assert victim["id"] not in [e["id"] for e in events(base)]
    cat = events(base, "&label=cat")[0]
    similar = api(base, "GET", f"/api/events/{cat['id']}/similar", token=TOKEN)[1]["results"]
    assert victim["id"] not in [r["id"] for r in similar]
    with Gallery(recorded / "gallery.db") as g:
        assert g.db.execute("SELECT count(*) FROM outbox WHERE event_id = ?", [victim["id"]]).fetchone()[0] == 0


# -- a real browser -----------------------------------------------------------------------------


def _cards(driver) -> list[tuple[int, str, str]]:
    """(id, kind, label) of the grid's cards, in order."""
    return [
        (int(i), k, label)
        for i, k, label in driver.execute_script(
            "return [...document.querySelectorAll('#grid li')].map(li => "
            "[li.dataset.id, li.classList.contains('match') ? 'match' : 'unknown', li.dataset.label])"
        )
    ]


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def _loaded(driver) -> str:
    return driver.execute_script("return document.body.dataset.loaded || ''")


@pytest.mark.browser
def test_in_a_real_browser(server, recorded, browser, embedder):  # noqa: F811 (the fixture)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ARTIFACTS = artifacts()
    base = base_of(server)
    browser.get(base + "/events")
    assert "needs the token" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(f"{base}/events?token={TOKEN}")  # the link sets the cookie, then the page
    assert browser.current_url == base + "/events"

    # the grid: every event the service recorded, newest first, each with its snapshot
    recorded_ids = [e["id"] for e in events(base)]
    wait_for(lambda: [c[0] for c in _cards(browser)] == recorded_ids[:24], what="the grid")
    wait_for(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth === 640)"
        ),
        what="the snapshots",
    )
    browser.save_screenshot(str(ARTIFACTS / "events-grid.png"))

    # a filter narrows them
    Select(browser.find_element(By.ID, "f-kind")).select_by_value("match")
    loaded = _loaded(browser)
    browser.find_element(By.ID, "apply").click()
    wait_for(lambda: _loaded(browser) != loaded, what="the filtered grid")
    cards = _cards(browser)
    assert [c[2] for c in cards] == ["coffee", "cat", "coffee", "cat"] and {c[1] for c in cards} == {"match"}
    browser.find_element(By.ID, "f-label").send_keys("cat")
    loaded = _loaded(browser)
    browser.find_element(By.ID, "apply").click()
    wait_for(lambda: _loaded(browser) != loaded, what="the grid of the cat")
    cards = _cards(browser)
    assert [c[2] for c in cards] == ["cat", "cat"]
    browser.save_screenshot(str(ARTIFACTS / "events-filtered.png"))

    # the detail (from the whole grid again): the snapshot with the match drawn over it, the
    # numbers, the enrolled photo beside it
    loaded = _loaded(browser)
    browser.find_element(By.ID, "clear").click()
    wait_for(lambda: _loaded(browser) != loaded and len(_cards(browser)) == len(recorded_ids), what="all events")
    browser.find_element(By.CSS_SELECTOR, f'#grid li[data-id="{cards[0][0]}"] button').click()
    wait_for(
        lambda: browser.execute_script(
            "const s = document.getElementById('d-snapshot'), p = document.getElementById('d-photo');"
            "return document.getElementById('detail').open && s.complete && s.naturalWidth > 0 && p.complete"
            " && p.naturalWidth > 0 && document.querySelector('#d-overlay polygon') !== null"
        ),
        what="the detail with its drawn match",
    )
    points = browser.execute_script("return document.querySelector('#d-overlay polygon').getAttribute('points')")
    assert len(points.split()) == 4
    assert (
        browser.execute_script("return document.getElementById('d-overlay').getAttribute('viewBox')") == "0 0 640 480"
    )
    fields = browser.find_element(By.ID, "d-fields").text
    for word in ("Score", "Threshold", "Margin", "Votes", "3 of 5", "Inliers"):
        assert word in fields, fields
    assert "Enrolled photo of cat" in browser.find_element(By.ID, "d-photo-caption").text
    browser.find_element(By.ID, "d-enrol").click()  # the label is the event's: one more photo of the cat
    wait_for(lambda: "Enrolled this crop as cat" in _text(browser, "d-notice"), what="the enrolment")
    browser.save_screenshot(str(ARTIFACTS / "events-detail.png"))

    # "find similar", no filter: the cat's other event first, then the rest
    loaded = _loaded(browser)
    browser.find_element(By.ID, "d-similar").click()
    wait_for(lambda: _loaded(browser) != loaded, what="the similar events")
    assert not browser.find_element(By.ID, "mode").get_attribute("hidden")
    ranked = _cards(browser)
    assert ranked[0] == (cards[1][0], "match", "cat") and cards[0][0] not in [c[0] for c in ranked]
    assert len(ranked) == len(recorded_ids) - 1
    assert "similarity" in browser.find_element(By.CSS_SELECTOR, "#grid li .caption").text
    browser.save_screenshot(str(ARTIFACTS / "events-similar.png"))

    # search with a photo: the cat's events first
    loaded = _loaded(browser)
    browser.find_element(By.ID, "search-file").send_keys(str(photo("cat")))
    wait_for(lambda: _loaded(browser) != loaded, what="the events like the photo")
    assert [c[2] for c in _cards(browser)[:2]] == ["cat", "cat"]
    assert "your photo" in browser.find_element(By.ID, "mode-text").text
    browser.save_screenshot(str(ARTIFACTS / "events-photo-search.png"))

    # live: another real service run records the cat again; the grid shows it without a reload
    browser.find_element(By.ID, "mode-back").click()
    wait_for(lambda: [c[0] for c in _cards(browser)][:1] == recorded_ids[:1], what="all events again")
    clip = democlip.DemoClip(1, sequence=("cat",)).write(recorded / "again.avi")
    config = service_config(clip, recorded / "gallery.db", recorded / "snapshots")
    config = replace(config, decision=replace(config.decision, unknown=False))
    Daemon(config, embedder=embedder, notifier=Notifier(None)).run()  # the page keeps polling meanwhile
    wait_for(lambda: _cards(browser) and _cards(browser)[0][0] > recorded_ids[0], what="the new event")
    assert _cards(browser)[0][1:] == ("match", "cat")
    assert "newest: cat" in browser.find_element(By.ID, "live").text
    time.sleep(0.5)  # the new card's snapshot
    browser.save_screenshot(str(ARTIFACTS / "events-live.png"))

    # pages: 24 a page, "Older" goes on from the last id shown, "Newer" comes back
    newest = events(base)
    with EventLog(recorded / "gallery.db", []) as log:
        template = log.event(newest[0]["id"])
        for n in range(26 - len(newest)):
            log.record(replace(template, id=None, time=template.time + 1 + n))
    everything = [e["id"] for e in events(base)]
    assert len(everything) == 26
    wait_for(lambda: [c[0] for c in _cards(browser)] == everything[:24], what="the first page")
    loaded = _loaded(browser)
    browser.find_element(By.ID, "older").click()
    wait_for(lambda: _loaded(browser) != loaded, what="the second page")
    assert [c[0] for c in _cards(browser)] == everything[24:]
    assert browser.find_element(By.ID, "older").get_attribute("disabled") is not None
    browser.save_screenshot(str(ARTIFACTS / "events-page-2.png"))
    loaded = _loaded(browser)
    browser.find_element(By.ID, "newer").click()
    wait_for(lambda: _loaded(browser) != loaded, what="the first page again")
    assert [c[0] for c in _cards(browser)] == everything[:24]
