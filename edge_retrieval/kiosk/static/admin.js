// The staff page: enrol from the camera or from photos, rename and remove items, set the threshold.
// Every write sends the staff token (from the page, which is only served with it) in a header.
"use strict";

const pending = []; // {blob, url} photos waiting to be enrolled

function notify(text, kind = "ok") {
  const notice = $("notice");
  notice.textContent = text;
  notice.className = kind;
  notice.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { notice.hidden = true; }, kind === "error" ? 10000 : 4000);
}

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// -- photos to enrol -------------------------------------------------------------------------
function addPending(blob) {
  pending.push({ blob, url: URL.createObjectURL(blob) });
  drawPending();
}

function drawPending() {
  const box = $("pending");
  box.replaceChildren();
  pending.forEach((photo, index) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = photo.url;
    img.alt = "Photo " + (index + 1) + " to enrol";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Leave this photo out";
    remove.addEventListener("click", () => {
      URL.revokeObjectURL(photo.url);
      pending.splice(index, 1);
      drawPending();
    });
    figure.append(img, remove);
    box.append(figure);
  });
}

$("capture").addEventListener("click", async () => {
  try {
    const response = await fetch("/api/frame.jpg?crop=roi", { cache: "no-store" });
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || "no frame");
    addPending(await response.blob());
  } catch (e) {
    notify("Capture failed: " + e.message, "error");
  }
});

$("files").addEventListener("change", (event) => {
  for (const file of event.target.files) addPending(file);
  event.target.value = "";
});

function parseDetails(text) {
  const metadata = {};
  for (const [number, line] of text.split("\n").entries()) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1) throw new Error("details line " + (number + 1) + ": write it as field = value");
    metadata[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return metadata;
}

$("enrol-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("enrol");
  try {
    if (!pending.length) throw new Error("capture the camera frame or add a photo first");
    const label = $("enrol-label").value.trim();
    const metadata = parseDetails($("enrol-meta").value);
    button.disabled = true;
    const images = await Promise.all(pending.map((p) => blobToBase64(p.blob)));
    const result = await api("POST", "/api/items", { label, metadata, images });
    notify("Enrolled " + result.added + " photo(s) as “" + result.item.label + "”.");
    pending.forEach((p) => URL.revokeObjectURL(p.url));
    pending.length = 0;
    drawPending();
    $("enrol-label").value = "";
    $("enrol-meta").value = "";
    loadItems();
  } catch (e) {
    notify("Not enrolled: " + e.message, "error");
  } finally {
    button.disabled = false;
  }
});

// -- items ----------------------------------------------------------------------------------
function detailsText(metadata) {
  return Object.entries(metadata || {})
    .map(([k, v]) => k + " = " + (typeof v === "string" ? v : JSON.stringify(v)))
    .join("\n");
}

async function loadItems() {
  const { items } = await api("GET", "/api/items");
  $("item-count").textContent = "(" + items.length + ")";
  const body = $("items").tBodies[0];
  body.replaceChildren();
  for (const item of items) {
    const row = body.insertRow();
    row.dataset.id = item.id;
    const img = document.createElement("img");
    img.src = item.photo;
    img.alt = "";
    img.className = "thumb";
    img.addEventListener("error", () => { img.hidden = true; });
    row.insertCell().append(img);

    const name = document.createElement("input");
    name.value = item.label;
    name.className = "item-label";
    name.setAttribute("aria-label", "Label of item " + item.id);
    const rename = document.createElement("button");
    rename.type = "button";
    rename.textContent = "Rename";
    rename.className = "secondary";
    rename.addEventListener("click", async () => {
      try {
        await api("PATCH", "/api/items/" + item.id, { label: name.value });
        notify("Renamed to “" + name.value.trim() + "”.");
        loadItems();
      } catch (e) { notify("Not renamed: " + e.message, "error"); }
    });
    const labelCell = row.insertCell();
    labelCell.append(name, rename);

    const details = document.createElement("pre");
    details.textContent = detailsText(item.metadata);
    row.insertCell().append(details);
    row.insertCell().textContent = item.embeddings;

    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.className = "danger";
    remove.addEventListener("click", async () => {
      if (!confirm("Remove “" + item.label + "” and its photos from the gallery?")) return;
      try {
        await api("DELETE", "/api/items/" + item.id);
        notify("Removed “" + item.label + "”.");
        loadItems();
      } catch (e) { notify("Not removed: " + e.message, "error"); }
    });
    row.insertCell().append(remove);
  }
}

// -- threshold ------------------------------------------------------------------------------
function showThreshold(settings) {
  // null: no threshold for this model until `edge-retrieval calibrate` ran (nothing matches)
  const shown = (t) => (t === null ? "none (calibrate first)" : t.toFixed(3));
  $("threshold").value = settings.threshold === null ? "" : settings.threshold.toFixed(2);
  $("threshold-range").value = settings.threshold === null ? 0 : settings.threshold;
  $("threshold-info").textContent = "Now " + shown(settings.threshold) +
    " (without this setting: " + shown(settings.default) + ").";
}
$("threshold-range").addEventListener("input", (e) => { $("threshold").value = Number(e.target.value).toFixed(2); });
$("threshold").addEventListener("input", (e) => { $("threshold-range").value = e.target.value; });
$("threshold-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    showThreshold(await api("PUT", "/api/settings", { threshold: Number($("threshold").value) }));
    notify("Threshold saved.");
  } catch (e) { notify("Not saved: " + e.message, "error"); }
});
$("threshold-reset").addEventListener("click", async () => {
  try {
    showThreshold(await api("PUT", "/api/settings", { threshold: null }));
    notify("Threshold back to the configuration's.");
  } catch (e) { notify("Not reset: " + e.message, "error"); }
});

// -- try a photo ----------------------------------------------------------------------------
$("search-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  const list = $("search-results");
  list.replaceChildren();
  try {
    const response = await fetch("/api/search?k=3", { method: "POST", body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" } });
    const result = await response.json();
    if (!response.ok) throw new Error(result.error);
    const verdict = document.createElement("li");
    verdict.className = "verdict";
    verdict.textContent = result.verdict.status === "match"
      ? "Recognised as “" + result.verdict.label + "”"
      : "Unknown: " + result.verdict.reason;
    list.append(verdict);
    for (const match of result.matches) {
      const li = document.createElement("li");
      li.textContent = match.label + " — " + match.score.toFixed(3);
      list.append(li);
    }
  } catch (e) { notify("Search failed: " + e.message, "error"); }
});

const live = $("live");
live.addEventListener("error", () => {
  setTimeout(() => { live.src = "/api/video.mjpg?t=" + Date.now(); }, 2000);
});

api("GET", "/api/settings").then(showThreshold).catch((e) => notify(e.message, "error"));
loadItems().catch((e) => notify(e.message, "error"));
