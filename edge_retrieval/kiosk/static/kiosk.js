// The kiosk page: the live view is an MJPEG <img>; the record comes pushed from /api/state/stream (SSE).
"use strict";

const $ = (id) => document.getElementById(id);

function show(state) {
  document.body.dataset.status = state.status;
  $("source").textContent = state.source ? "Camera: " + state.source : "";
  $("fps").textContent = state.fps ? state.fps.toFixed(1) + " frames/s" : "";
  if (state.status === "match" && state.item) {
    const item = state.item;
    $("label").textContent = item.label;
    const photo = $("photo");
    if (photo.getAttribute("src") !== item.photo) {
      photo.hidden = false;
      photo.setAttribute("src", item.photo);
    }
    const fields = $("fields");
    fields.replaceChildren();
    for (const [key, value] of Object.entries(item.metadata || {})) {
      const dt = document.createElement("dt");
      dt.textContent = key.replace(/_/g, " ");
      const dd = document.createElement("dd");
      dd.textContent = typeof value === "string" ? value : JSON.stringify(value);
      fields.append(dt, dd);
    }
    const score = state.score ?? 0;
    $("score").textContent = score.toFixed(2);
    $("score-fill").style.width = Math.max(0, Math.min(1, score)) * 100 + "%";
  }
  if (state.status === "error" || state.status === "ended") {
    $("message").textContent = state.message || "";
  }
}

$("photo").addEventListener("error", () => { $("photo").hidden = true; });

function connect() {
  const events = new EventSource("/api/state/stream");
  events.onopen = () => {
    $("connection").textContent = "";
    document.body.classList.remove("offline");
  };
  events.onmessage = (message) => show(JSON.parse(message.data));
  events.onerror = () => {
    $("connection").textContent = "reconnecting…";
    document.body.classList.add("offline");
  };
}
connect();

// The live view: if the stream breaks (server restart), try again.
const live = $("live");
live.addEventListener("error", () => {
  $("live-text").textContent = "no picture";
  setTimeout(() => { live.src = "/api/video.mjpg?t=" + Date.now(); }, 2000);
});
live.addEventListener("load", () => { $("live-text").textContent = "live"; });

// Full screen: the button, the F key or a double click (Chromium's --kiosk mode is full screen already).
function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else document.documentElement.requestFullscreen().catch(() => {});
}
$("fullscreen").addEventListener("click", toggleFullscreen);
document.addEventListener("dblclick", toggleFullscreen);
document.addEventListener("keydown", (e) => { if (e.key === "f" || e.key === "F") toggleFullscreen(); });
document.addEventListener("fullscreenchange", () => {
  document.body.classList.toggle("is-fullscreen", Boolean(document.fullscreenElement));
});
