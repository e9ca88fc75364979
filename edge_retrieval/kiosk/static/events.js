// The events page: the camera's events as a grid (newest first, paged by id), filters, an event's
// detail with the match drawn over its snapshot, the staff's answers, and search by example.
// Pictures are read with the cookie /events?token= set; every request also sends the token.
"use strict";

const PAGE = 24;
const POLL_MS = 2000; // the service may be another process: the page asks for the newest id
const SVG = document.getElementById("d-overlay").namespaceURI; // (no URL in the page: it is offline)

const state = {
  filters: {},
  pages: [null], // the `before` id of each page seen (null: the newest)
  next: null,
  mode: null, // null: all events; {event: id} or {photo: blob, url}: search by example
  latest: 0,
  shown: null, // the event in the detail
};

function notify(text, kind = "ok") {
  const notice = $("detail").open ? $("d-notice") : $("notice"); // (a modal dialog covers the page's)
  notice.textContent = text;
  notice.className = kind;
  notice.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { notice.hidden = true; }, kind === "error" ? 10000 : 4000);
}

const num = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : "–");
const when = (t) => new Date(t * 1000).toLocaleString();
const el = (tag, className, text) => {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
};

function query(extra) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...state.filters, ...extra })) {
    if (v !== null && v !== undefined && v !== "") params.set(k, v);
  }
  return params.toString();
}

// -- the grid ------------------------------------------------------------------------------
function card(event) {
  const li = el("li", "event " + event.kind);
  li.dataset.id = event.id;
  li.dataset.label = event.label || "";
  const open = el("button", "open");
  open.type = "button";
  open.title = "Event " + event.id;
  if (event.snapshot) {
    const img = el("img");
    img.src = event.snapshot;
    img.alt = (event.label || "unknown") + " at " + when(event.time);
    img.loading = "lazy";
    open.append(img);
  } else {
    open.append(el("div", "no-picture", "no snapshot"));
  }
  const caption = el("div", "caption");
  const name = el("span", "pill " + event.kind, event.label || "unknown");
  caption.append(name);
  if (typeof event.similarity === "number") {
    caption.append(el("span", "similarity", "similarity " + num(event.similarity)));
  } else {
    caption.append(el("span", "score", "score " + num(event.score, 2)));
  }
  caption.append(el("span", "when", when(event.time)), el("span", "source", event.source));
  open.append(caption);
  open.addEventListener("click", () => showDetail(event.id));
  li.append(open);
  return li;
}

function drawGrid(events) {
  $("grid").replaceChildren(...events.map(card));
  $("empty").hidden = events.length > 0;
}

async function load() {
  try {
    if (state.mode) return await loadSimilar();
    const before = state.pages[state.pages.length - 1];
    const data = await api("GET", "/api/events?" + query({ before, limit: PAGE }));
    state.next = data.next;
    state.latest = Math.max(state.latest, data.latest);
    drawGrid(data.events);
    $("newer").disabled = state.pages.length === 1;
    $("older").disabled = data.next === null;
    $("page-info").textContent = "page " + state.pages.length;
    document.querySelector(".pager").hidden = false;
    document.body.dataset.loaded = String(Date.now());
  } catch (error) {
    notify("Cannot load the events: " + error.message, "error");
  }
}

async function loadSimilar() {
  const mode = state.mode;
  const data = mode.event !== undefined
    ? await api("GET", `/api/events/${mode.event}/similar?` + query({ top_k: 48 }))
    : await api("POST", "/api/events/search?" + query({ top_k: 48 }), mode.photo);
  drawGrid(data.results);
  document.querySelector(".pager").hidden = true;
  document.body.dataset.loaded = String(Date.now());
}

function setMode(mode) {
  if (state.mode && state.mode.url) URL.revokeObjectURL(state.mode.url);
  state.mode = mode;
  $("mode").hidden = !mode;
  document.body.classList.toggle("similar", !!mode);
  if (mode) {
    const image = $("mode-image");
    image.src = mode.url || `/api/events/${mode.event}/snapshot.jpg`;
    image.hidden = !mode.url && !mode.snapshot;
    $("mode-text").textContent = mode.event !== undefined
      ? `Events most like event ${mode.event}, best first`
      : "Events most like your photo, best first";
  }
  state.pages = [null];
  load();
}

// -- live ------------------------------------------------------------------------------------
async function poll() {
  try {
    const data = await api("GET", "/api/events?limit=1");
    const newest = data.events[0];
    $("live").textContent = newest
      ? `live · newest: ${newest.label || "unknown"}, ${when(newest.time)}`
      : "live · no events yet";
    $("live").classList.remove("offline");
    if (data.latest > state.latest) {
      state.latest = data.latest;
      if (!state.mode && state.pages.length === 1) await load();
    }
  } catch (error) {
    $("live").textContent = "offline: " + error.message;
    $("live").classList.add("offline");
  }
  setTimeout(poll, POLL_MS);
}

// -- the detail ------------------------------------------------------------------------------
function field(dl, name, value) {
  dl.append(el("dt", "", name), el("dd", "", value));
}

function drawMatch(event) {
  const img = $("d-snapshot"), svg = $("d-overlay");
  svg.replaceChildren();
  const w = img.naturalWidth, h = img.naturalHeight;
  if (!w || !h) return;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const stroke = Math.max(2, w / 320);
  const shape = (tag, attrs) => {
    const s = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) s.setAttribute(k, v);
    svg.append(s);
    return s;
  };
  if (event.box) {
    const [x0, y0, x1, y1] = event.box;
    shape("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: "roi", "stroke-width": stroke });
  }
  if (event.polygon) {
    shape("polygon", { points: event.polygon.map((p) => p.join(",")).join(" "), class: "outline " + event.kind,
                       "stroke-width": stroke * 1.5 });
  }
  for (const [x, y] of event.points || []) shape("circle", { cx: x, cy: y, r: stroke * 1.5, class: "inlier" });
}

async function showDetail(id) {
  let event;
  try {
    event = await api("GET", `/api/events/${id}`);
  } catch (error) {
    return notify(error.message, "error");
  }
  state.shown = event;
  $("d-title").textContent = `${event.label || "Unknown object"} · event ${event.id}`;
  const img = $("d-snapshot");
  $("d-overlay").replaceChildren();
  img.onload = () => drawMatch(event);
  img.hidden = !event.snapshot;
  if (event.snapshot) img.src = event.snapshot;
  else img.removeAttribute("src");
  $("d-shot-caption").textContent = event.snapshot ? "What the camera saw, the match drawn" : "No snapshot kept";
  const photo = $("d-photo");
  photo.parentElement.hidden = !event.item;
  if (event.item) {
    photo.src = event.item.photo;
    $("d-photo-caption").textContent = "Enrolled photo of " + event.item.label;
  }
  const dl = $("d-fields");
  dl.replaceChildren();
  field(dl, "Kind", event.kind);
  field(dl, "Score", num(event.score));
  field(dl, "Threshold", num(event.threshold));
  field(dl, "Margin", num(event.margin));
  field(dl, "Votes", event.votes != null ? `${event.votes} of ${event.window}` : "–");
  if (event.inliers != null) field(dl, "Inliers", String(event.inliers));
  if (event.aligned != null) field(dl, "Aligned (dense)", num(event.aligned));
  field(dl, "Time", when(event.time));
  field(dl, "Source", event.source);
  for (const [k, v] of Object.entries(event.metadata || {})) field(dl, k, typeof v === "string" ? v : JSON.stringify(v));
  $("d-enrol-label").value = event.label || "";
  $("d-not-label").value = event.label || "";
  $("d-delete").textContent = "Delete";
  $("d-notice").hidden = true;
  $("d-similar").disabled = false;
  const dialog = $("detail");
  if (!dialog.open) dialog.showModal();
}

function closeDetail() {
  $("detail").close();
  state.shown = null;
}

async function answer(kind, label) {
  const event = state.shown;
  try {
    const data = await api("POST", `/api/events/${event.id}/${kind}`, { label });
    notify(kind === "enrol"
      ? `Enrolled this crop as ${data.item.label} (${data.item.embeddings} photo(s) now)`
      : `Enrolled as NOT ${data.item.label}: it will not be taken for ${data.item.label} again`);
  } catch (error) {
    notify(error.message, "error");
  }
}

// -- wiring ----------------------------------------------------------------------------------
function readFilters() {
  const seconds = (value) => (value ? String(new Date(value).getTime() / 1000) : "");
  state.filters = {
    label: $("f-label").value.trim(),
    kind: $("f-kind").value,
    source: $("f-source").value.trim(),
    since: seconds($("f-since").value),
    until: seconds($("f-until").value),
  };
}

$("filters").addEventListener("submit", (e) => {
  e.preventDefault();
  readFilters();
  state.pages = [null];
  load();
});
$("clear").addEventListener("click", () => {
  $("filters").reset();
  readFilters();
  setMode(null);
});
$("older").addEventListener("click", () => {
  if (state.next === null) return;
  state.pages.push(state.next);
  load();
});
$("newer").addEventListener("click", () => {
  if (state.pages.length > 1) state.pages.pop();
  load();
});
$("search-file").addEventListener("change", () => {
  const file = $("search-file").files[0];
  if (file) setMode({ photo: file, url: URL.createObjectURL(file) });
  $("search-file").value = "";
});
$("mode-back").addEventListener("click", () => setMode(null));
$("d-close").addEventListener("click", closeDetail);
$("d-similar").addEventListener("click", () => {
  const event = state.shown;
  closeDetail();
  setMode({ event: event.id, snapshot: event.snapshot });
});
$("d-enrol-form").addEventListener("submit", (e) => {
  e.preventDefault();
  answer("enrol", $("d-enrol-label").value.trim());
});
$("d-not-form").addEventListener("submit", (e) => {
  e.preventDefault();
  answer("not", $("d-not-label").value.trim());
});
$("d-delete").addEventListener("click", async () => {
  const button = $("d-delete");
  if (button.textContent === "Delete") {
    button.textContent = "Really delete?";
    return;
  }
  try {
    await api("DELETE", `/api/events/${state.shown.id}`);
    notify(`Event ${state.shown.id} deleted, with its snapshot`);
    closeDetail();
    load();
  } catch (error) {
    notify(error.message, "error");
  }
});

api("GET", "/api/items").then((data) => {
  $("labels").replaceChildren(...data.items.map((item) => { const o = el("option"); o.value = item.label; return o; }));
}).catch(() => {});
readFilters();
load();
poll();
