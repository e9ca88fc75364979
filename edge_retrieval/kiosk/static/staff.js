// What the staff pages (admin.js, events.js) share: the token the page was served with, and
// `api`, which sends it with every request and turns a refusal into an Error with its message.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = document.querySelector('meta[name="kiosk-token"]').content;

async function api(method, url, body, type) {
  const options = { method, headers: { Authorization: "Bearer " + TOKEN } };
  if (body instanceof Blob) {
    options.body = body;
    options.headers["Content-Type"] = type || body.type || "application/octet-stream";
  } else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
  return data;
}
