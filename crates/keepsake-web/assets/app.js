// Keepsake's web library: one page, no framework, nothing fetched from anywhere but this
// server. Every view reads the JSON API; every change carries the session's CSRF token.
"use strict";

const state = { session: null, events: null, reload: null };
const main = () => document.getElementById("main");

// ---- small helpers ---------------------------------------------------------------------

/** Builds an element; strings become text, never markup. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function say(text) {
  const notice = document.getElementById("notice");
  notice.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { notice.textContent = ""; }, 5000);
}

class ApiError extends Error {
  constructor(status, reason, message) { super(message); this.status = status; this.reason = reason; }
}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET" && state.session) init.headers["x-csrf-token"] = state.session.csrf;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return {};
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401 && path !== "/api/sign-in") showSignIn();
    throw new ApiError(response.status, data.reason || "ERROR", data.message || response.statusText);
  }
  return data;
}

function bytes(n) {
  if (n === null || n === undefined) return "unknown";
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let value = n, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit++; }
  return unit === 0 ? `${n} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

function when(ms) {
  if (ms === null || ms === undefined) return "unknown";
  return new Date(ms).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function duration(ms) {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function newId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function page(title, ...children) {
  const root = main();
  root.replaceChildren(h("h1", { text: title }), ...children);
  document.title = `${title} — Keepsake`;
  return root;
}

// ---- sign-in ---------------------------------------------------------------------------

function showSignIn(message) {
  state.session = null;
  if (state.events) { state.events.close(); state.events = null; }
  document.getElementById("top").hidden = true;
  const error = h("p", { class: "error", role: "alert", id: "sign-in-error", text: message || "" });
  const account = h("input", { id: "sign-in-account", name: "account", autocomplete: "username", required: true });
  const password = h("input", { id: "sign-in-password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "form", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title", text: "Sign in to Keepsake" }),
    h("label", { for: "sign-in-account", text: "Account" }), account,
    h("label", { for: "sign-in-password", text: "Password" }), password,
    h("button", { id: "sign-in-submit", class: "primary", type: "submit", text: "Sign in" }),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      await api("POST", "/api/sign-in", { account: account.value, password: password.value });
      state.session = await api("GET", "/api/session");
      start();
    } catch (e) {
      error.textContent = e.status === 401 || e.status === 403 || e.reason === "UNAUTHENTICATED"
        ? "That account and password do not match." : e.message;
    }
  });
  main().replaceChildren(form);
  document.title = "Sign in — Keepsake";
  account.focus();
}

/** Whether the person is typing in a field of the view shown. */
function typing() {
  const field = document.activeElement;
  return Boolean(field && main().contains(field) && field.matches("input, textarea, select"));
}

async function start() {
  document.getElementById("top").hidden = false;
  if (!state.events) {
    // A change anywhere (a device's photo, another tab's edit) refreshes what is shown.
    state.events = new EventSource("/api/events");
    let pending = null;
    state.events.addEventListener("change", () => {
      clearTimeout(pending);
      pending = setTimeout(() => {
        if (!state.reload) return;
        // Far down a grid, redrawing it would lose the person's place: tell them instead.
        if (window.scrollY > 600) say("Your library changed: scroll to the top and reload to see it.");
        // Redrawing under someone typing (an album's name) would throw their words away:
        // the next change, or what they submit, redraws the view.
        else if (typing()) return;
        else state.reload();
      }, 300);
    });
  }
  route();
}

// ---- grids -----------------------------------------------------------------------------

const MONTH = { year: "numeric", month: "long" };
const DAY = { weekday: "long", day: "numeric", month: "long" };

function tile(asset) {
  const label = `${asset.kind === "video" ? "Video" : "Photo"} ${asset.name}` +
    (asset.taken_ms ? `, taken ${when(asset.taken_ms)}` : "");
  const picture = asset.thumbnail || asset.poster;
  return h("a", { class: "tile", href: `#/asset/${encodeURIComponent(asset.id)}`, "data-asset-id": asset.id, "data-name": asset.name, "aria-label": label },
    picture ? h("img", { src: picture, alt: label, loading: "lazy", decoding: "async" })
      : h("span", { class: "noimg", text: asset.name }),
    asset.kind === "video" && asset.details.duration_ms ? h("span", { class: "badge", text: duration(asset.details.duration_ms) }) : null,
    asset.favorite ? h("span", { class: "fav", "aria-hidden": "true", text: "♥" }) : null,
    asset.trashed_at_ms ? h("span", { class: "badge", text: daysLeft(asset.trashed_at_ms) }) : null);
}

// How long Recently Deleted keeps things, as the server says (its default until it has).
function trashDays() { return (state.session && state.session.trash_days) || 30; }
function daysLeft(trashedAt) {
  const left = Math.max(0, Math.ceil(trashDays() - (Date.now() - trashedAt) / 86400000));
  return left === 1 ? "1 day" : `${left} days`;
}

/**
 * A grid of assets read a page at a time as the person scrolls, grouped by month and day
 * of capture; never the whole library at once.
 */
function grid(root, query, { groups = true, empty = "Nothing here yet." } = {}) {
  const container = h("div", { class: "timeline" });
  const sentinel = h("div", { class: "sentinel", "aria-hidden": "true" });
  const status = h("p", { role: "status" });
  root.append(container, status, sentinel);
  let next = "", done = false, busy = false, lastMonth = null, lastDay = null, currentGrid = null, shown = 0;
  async function more() {
    if (busy || done) return;
    busy = true;
    try {
      const params = new URLSearchParams(query);
      if (next) params.set("page", next);
      const answer = await api("GET", `/api/assets?${params}`);
      for (const asset of answer.assets) {
        const at = asset.taken_ms ? new Date(asset.taken_ms) : null;
        if (groups) {
          const month = at ? at.toLocaleDateString(undefined, MONTH) : "Undated";
          const day = at ? at.toLocaleDateString(undefined, DAY) : "";
          if (month !== lastMonth) { container.append(h("h2", { text: month })); lastMonth = month; lastDay = null; }
          if (day !== lastDay) {
            if (day) container.append(h("h3", { text: day }));
            currentGrid = h("div", { class: "grid" });
            container.append(currentGrid);
            lastDay = day;
          }
        } else if (!currentGrid) {
          currentGrid = h("div", { class: "grid" });
          container.append(currentGrid);
        }
        currentGrid.append(tile(asset));
        shown++;
      }
      next = answer.next || "";
      done = !answer.next;
      status.textContent = done && shown === 0 ? empty : "";
    } catch (e) {
      status.textContent = e.message;
    } finally {
      busy = false;
    }
    if (!done && sentinel.getBoundingClientRect().top < window.innerHeight * 2) more();
  }
  const observer = new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) more(); }, { rootMargin: "1200px" });
  observer.observe(sentinel);
  more();
}

// ---- views -----------------------------------------------------------------------------

function libraryView() {
  const root = page("Library");
  grid(root, {}, { empty: "No photos yet: enrol a device, or upload from this page." });
}

function favoritesView() {
  const root = page("Favourites");
  grid(root, { favorites: "true" }, { empty: "No favourites yet." });
}

function hiddenView() {
  const root = page("Hidden");
  const show = h("button", { id: "show-hidden", class: "primary", type: "button", text: "Show hidden photos" });
  root.append(h("p", { text: "Hidden photos stay out of the library and its albums. Showing them needs this second step." }), show);
  show.addEventListener("click", () => {
    show.remove();
    grid(root, { hidden: "true" }, { groups: false, empty: "Nothing is hidden." });
  });
  state.reload = null;
}

function deletedView() {
  const root = page("Recently Deleted");
  root.append(h("p", { text: `Photos and videos stay here for ${trashDays()} days, then they are deleted for good. Open one to restore it or delete it now.` }));
  grid(root, { trashed: "true" }, { groups: false, empty: "Nothing was deleted lately." });
}

async function foldersView(path) {
  const title = path ? path : "Folders";
  const root = page(title);
  const { folders } = await api("GET", "/api/folders");
  const prefix = path ? `${path}/` : "";
  const children = folders.filter((f) => f.path.startsWith(prefix) && f.path !== path && f.path !== "" &&
    !f.path.slice(prefix.length).includes("/"));
  if (path) {
    const up = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
    root.append(h("p", {}, h("a", { href: up ? `#/folders/${encodeURIComponent(up)}` : "#/folders", text: "↑ Up" })));
  }
  if (children.length) {
    root.append(h("ul", { class: "list", "aria-label": "Folders" }, children.map((f) =>
      h("li", {}, h("a", { href: `#/folders/${encodeURIComponent(f.path)}`, "data-folder": f.path, text: f.path.slice(prefix.length) }),
        ` — ${f.assets} item${f.assets === 1 ? "" : "s"}`))));
  }
  grid(root, { folder: path || "" }, { groups: false, empty: children.length ? "" : "This folder is empty." });
}

async function albumsView() {
  const root = page("Albums");
  const name = h("input", { id: "album-name", "aria-label": "New album's name", placeholder: "New album" });
  const form = h("form", { class: "actions" }, name, h("button", { type: "submit", text: "Create album" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!name.value.trim()) return;
    try { await api("POST", "/api/albums", { name: name.value }); say("Album created"); albumsView(); }
    catch (e) { say(e.message); }
  });
  root.append(form);
  const { albums } = await api("GET", "/api/albums");
  if (!albums.length) root.append(h("p", { text: "No albums yet." }));
  root.append(h("ul", { class: "list" }, albums.map((a) =>
    h("li", {}, h("a", { href: `#/album/${encodeURIComponent(a.id)}`, text: a.name }), ` — ${a.assets} item${a.assets === 1 ? "" : "s"}`))));
}

async function albumView(id) {
  const { albums } = await api("GET", "/api/albums");
  const album = albums.find((a) => a.id === id);
  const root = page(album ? album.name : "Album");
  grid(root, { album: id }, { empty: "This album is empty." });
}

async function assetView(id) {
  const asset = await api("GET", `/api/assets/${encodeURIComponent(id)}`);
  const root = page(asset.title || asset.name);
  const original = `/original/${encodeURIComponent(asset.id)}`;
  const picture = asset.kind === "video"
    ? h("video", { controls: true, preload: "metadata", poster: asset.poster, src: `${original}?inline=true`, "aria-label": asset.name })
    : (asset.preview || asset.thumbnail)
      ? h("img", { src: asset.preview || asset.thumbnail, alt: `${asset.name}${asset.taken_ms ? `, taken ${when(asset.taken_ms)}` : ""}` })
      : h("p", { text: "The preview is still being made." });
  const actions = h("div", { class: "actions" });
  const act = (label, attrs, run) => {
    const button = h("button", { type: "button", ...attrs, text: label });
    button.addEventListener("click", async () => {
      button.disabled = true;
      try { await run(); } catch (e) { say(e.message); } finally { button.disabled = false; }
    });
    actions.append(button);
    return button;
  };
  if (asset.trashed_at_ms) {
    root.append(h("p", { class: "warn", text: `In Recently Deleted: ${daysLeft(asset.trashed_at_ms)} left.` }));
    act("Restore", { id: "restore", class: "primary" }, async () => { await api("POST", `/api/assets/${id}/restore`); say("Restored"); assetView(id); });
    act("Delete now", { id: "purge", class: "danger" }, async () => {
      if (!confirm(`Delete ${asset.name} for good, on every device? This cannot be undone.`)) return;
      await api("POST", `/api/assets/${id}/purge`); say("Deleted for good"); location.hash = "#/deleted";
    });
  } else {
    act(asset.favorite ? "♥ Favourite" : "♡ Favourite", { id: "favorite", "aria-pressed": String(asset.favorite) }, async () => {
      await api("POST", `/api/assets/${id}/favorite`, { on: !asset.favorite }); assetView(id);
    });
    act(asset.hidden ? "Unhide" : "Hide", { id: "hide" }, async () => {
      await api("POST", `/api/assets/${id}/hidden`, { on: !asset.hidden }); assetView(id);
    });
    act("Delete", { id: "trash", class: "danger" }, async () => {
      await api("POST", `/api/assets/${id}/trash`); say("Moved to Recently Deleted"); assetView(id);
    });
  }
  actions.append(h("a", { class: "button", id: "download", href: original, download: asset.name, text: "Download original" }));
  const albumPicker = h("select", { id: "album-pick", "aria-label": "Album" });
  const albumForm = h("form", { class: "actions" }, albumPicker, h("button", { type: "submit", text: "Add to album" }));
  api("GET", "/api/albums").then(({ albums }) => {
    albumPicker.replaceChildren(...albums.map((a) => h("option", { value: a.id, text: a.name })));
    if (!albums.length) albumForm.replaceChildren(h("a", { href: "#/albums", text: "Create an album to add this to" }));
  }).catch(() => {});
  albumForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try { await api("POST", `/api/assets/${id}/album`, { album_id: albumPicker.value, present: true }); say("Added to the album"); }
    catch (e) { say(e.message); }
  });
  const d = asset.details || {};
  const facts = [
    ["Taken", asset.taken_ms ? when(asset.taken_ms) : "unknown"],
    ["Where in the library", asset.path],
    ["Size", `${bytes(asset.size)}${asset.width ? `, ${asset.width} × ${asset.height}` : ""}`],
    ["Camera", d.camera || "not recorded"],
    ["Lens", d.lens || null],
    ["Place", d.latitude !== null && d.latitude !== undefined ? `${d.latitude.toFixed(5)}, ${d.longitude.toFixed(5)}` : "not recorded"],
    ["Length", d.duration_ms ? duration(d.duration_ms) : null],
  ].filter(([, v]) => v !== null);
  const versions = h("ol", { class: "list", reversed: true, id: "versions" }, (asset.versions || []).map((v) =>
    h("li", {}, `Version ${v.version} — ${when(v.created_at_ms)}, ${bytes(v.size)}`,
      v.version === asset.version ? " (current)" : h("button", {
        type: "button", class: "revert", "data-version": v.version, text: "Revert to this version",
        onclick: async () => {
          try { await api("POST", `/api/assets/${id}/revert`, { version: v.version, request_id: newId() }); say(`Reverted to version ${v.version}`); assetView(id); }
          catch (e) { say(e.message); }
        },
      }))));
  root.append(h("div", { class: "viewer" },
    h("div", {}, picture),
    h("div", {}, actions, albumForm, h("dl", {}, facts.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })])),
      asset.damaged ? h("p", { class: "warn", text: "Part of this file was found damaged on the server; a device that has it will send it again." }) : null,
      h("h2", { text: "Versions" }), versions)));
  state.reload = null;
}

async function devicesView() {
  const root = page("Devices");
  const { devices } = await api("GET", "/api/devices");
  const cards = h("div", { class: "cards" });
  for (const d of devices) {
    const web = d.platform === "web";
    const card = h("section", { class: "card device", "data-device-id": d.id, "data-state": d.state || "", "aria-label": d.name },
      h("h2", { text: d.name + (d.this_browser ? " (this browser)" : "") }),
      h("p", { text: `${web ? "Browser session" : d.platform} · version ${d.version}` }));
    if (d.revoked_at_ms) card.append(h("p", { class: "warn", text: `Revoked ${when(d.revoked_at_ms)}: it no longer syncs. Enrol it again to use it.` }));
    else if (d.silent_since_ms) card.append(h("p", { class: "warn silent", text: `Not heard from since ${when(d.silent_since_ms)}. Open Keepsake on it, or check that it is switched on and online.` }));
    if (!web && !d.revoked_at_ms) {
      const stateText = d.state ? d.state[0].toUpperCase() + d.state.slice(1) : "No report yet";
      card.append(h("p", { class: "state" }, h("strong", { text: stateText })));
      if (d.message) card.append(h("p", { class: "reason", text: d.message }));
      if (d.fix) card.append(h("p", { class: "fix" }, h("strong", { text: "Fix: " }), d.fix));
      if (d.reason_since_ms && d.message) card.append(h("p", { text: `Since ${when(d.reason_since_ms)}` }));
      card.append(h("dl", {},
        h("dt", { text: "Last contact" }), h("dd", { text: d.last_seen_ms ? when(d.last_seen_ms) : "never" }),
        h("dt", { text: "Still to send" }), h("dd", { text: `${d.pending_items} item${d.pending_items === 1 ? "" : "s"} (${bytes(d.pending_bytes)})` }),
        h("dt", { text: "Still to receive" }), h("dd", { text: `${d.pending_downloads}` }),
        d.network ? [h("dt", { text: "Network" }), h("dd", { text: d.network })] : null,
        d.battery_percent !== null && d.battery_percent !== undefined ? [h("dt", { text: "Battery" }), h("dd", { text: `${d.battery_percent}%${d.charging ? ", charging" : ""}` })] : null,
        d.free_bytes !== null && d.free_bytes !== undefined ? [h("dt", { text: "Free space" }), h("dd", { text: bytes(d.free_bytes) })] : null));
    }
    if (!d.revoked_at_ms && !d.this_browser) {
      card.append(h("button", { type: "button", class: "danger revoke", text: web ? "Sign this browser out" : "Revoke (lost or sold device)",
        onclick: async () => {
          if (!confirm(`Revoke ${d.name}? It stops syncing at once; nothing on it is deleted.`)) return;
          try { await api("POST", `/api/devices/${encodeURIComponent(d.id)}/revoke`); say("Revoked"); devicesView(); }
          catch (e) { say(e.message); }
        } }));
    }
    cards.append(card);
  }
  root.append(cards);
}

async function accountView() {
  const root = page("Account");
  const a = await api("GET", "/api/account");
  const share = a.limit_bytes ? Math.min(100, (100 * a.used_bytes) / a.limit_bytes) : 0;
  const bar = h("div", { class: "meter", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": share.toFixed(0), "aria-label": "Storage used" }, h("div", {}));
  bar.firstChild.style.width = `${share}%`;
  root.append(
    h("p", { text: `Signed in as ${a.account}. Plan: ${a.plan} (${bytes(a.limit_bytes)}).` }),
    bar,
    h("p", { id: "usage", text: `${bytes(a.used_bytes)} used of ${bytes(a.limit_bytes)}${a.reserved_bytes ? `, ${bytes(a.reserved_bytes)} held for uploads in progress` : ""}.` }),
    h("h2", { text: "Are my originals safe?" }),
    h("p", { id: "integrity", text: a.integrity
      ? `Your ${a.integrity.verified} originals were last verified byte for byte on ${when(a.integrity.checked_at_ms)}.` +
        (a.integrity.waiting ? ` ${a.integrity.waiting} need a device to send them again.` : " None is waiting for repair.")
      : "The server has not verified your originals yet; it does so every week." }));
}

// ---- uploads ---------------------------------------------------------------------------

const PIECE = 8 * 1024 * 1024;

async function uploadOne(file, folder, row) {
  const bar = row.querySelector("progress");
  const note = row.querySelector(".note");
  let upload;
  try {
    upload = await api("POST", "/api/uploads", { name: file.name, folder, size: file.size, modified_ms: file.lastModified });
  } catch (e) {
    row.dataset.state = "refused";
    note.textContent = e.message;
    return;
  }
  let received = upload.received, failures = 0;
  for (;;) {
    const end = Math.min(file.size, received + PIECE);
    const range = file.size === 0 ? `bytes */0` : end > received ? `bytes ${received}-${end - 1}/${file.size}` : `bytes */${file.size}`;
    try {
      const response = await fetch(`/api/uploads/${upload.id}`, {
        method: "PUT", credentials: "same-origin",
        headers: { "content-range": range, "x-csrf-token": state.session.csrf },
        body: end > received ? file.slice(received, end) : new Blob([]),
      });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new ApiError(response.status, data.reason, data.message || response.statusText);
      received = data.received;
      failures = 0;
      bar.value = file.size ? received / file.size : 1;
      if (data.done) {
        row.dataset.state = "done";
        note.textContent = `Saved as ${data.path}`;
        return;
      }
      note.textContent = `${bytes(received)} of ${bytes(file.size)}`;
    } catch (e) {
      if (e.reason === "QUOTA_EXCEEDED" || e.status === 400 || e.status === 401 || e.status === 403 || e.status === 404 || ++failures > 8) {
        row.dataset.state = "failed";
        note.textContent = e.message;
        return;
      }
      // A dropped connection: ask what arrived, then go on from there.
      note.textContent = `Connection lost; resuming… (${e.message})`;
      await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** failures)));
      try { received = (await api("GET", `/api/uploads/${upload.id}`)).received; } catch { /* tried again next round */ }
    }
  }
}

async function uploadView() {
  const root = page("Upload");
  const folder = h("input", { id: "upload-folder", list: "folder-list", placeholder: "Uploads", "aria-label": "Folder to upload into", value: "Uploads" });
  const datalist = h("datalist", { id: "folder-list" });
  const input = h("input", { id: "upload-input", type: "file", multiple: true, accept: "image/*,video/*", "aria-label": "Choose photos and videos" });
  const drop = h("div", { class: "drop", id: "drop" }, h("p", { text: "Drop photos and videos here, or choose them:" }), input);
  const rows = h("ul", { class: "list", id: "uploads" });
  root.append(h("p", {}, h("label", { for: "upload-folder", text: "Folder: " }), folder, datalist), drop, rows);
  api("GET", "/api/folders").then(({ folders }) => datalist.replaceChildren(...folders.filter((f) => f.path).map((f) => h("option", { value: f.path })))).catch(() => {});
  async function send(files) {
    const queue = Array.from(files).map((file) => {
      const row = h("li", { class: "upload", "data-name": file.name, "data-state": "sending" },
        h("span", { text: `${file.name} (${bytes(file.size)})` }), h("progress", { max: "1", value: "0", "aria-label": `Upload of ${file.name}` }), h("span", { class: "note" }));
      rows.append(row);
      return [file, row];
    });
    // Three at a time: enough to fill the link, few enough to show progress.
    const lanes = Array.from({ length: 3 }, async () => {
      while (queue.length) { const [file, row] = queue.shift(); await uploadOne(file, folder.value.trim(), row); }
    });
    await Promise.all(lanes);
  }
  input.addEventListener("change", () => send(input.files));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); send(e.dataTransfer.files); });
  state.reload = null;
}

// ---- routing ---------------------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, libraryView, true],
  [/^#\/folders$/, () => foldersView(""), true],
  [/^#\/folders\/(.+)$/, (p) => foldersView(decodeURIComponent(p)), true],
  [/^#\/albums$/, albumsView, true],
  [/^#\/album\/(.+)$/, (id) => albumView(decodeURIComponent(id)), true],
  [/^#\/favorites$/, favoritesView, true],
  [/^#\/hidden$/, hiddenView, false],
  [/^#\/deleted$/, deletedView, true],
  [/^#\/upload$/, uploadView, false],
  [/^#\/devices$/, devicesView, true],
  [/^#\/account$/, accountView, true],
  [/^#\/asset\/(.+)$/, (id) => assetView(decodeURIComponent(id)), false],
];

async function route() {
  if (!state.session) return;
  const hash = location.hash || "#/";
  for (const link of document.querySelectorAll("nav a")) {
    const active = link.getAttribute("href") === hash || (hash.startsWith("#/folders") && link.getAttribute("href") === "#/folders");
    if (active) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  for (const [pattern, view, live] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    const run = () => Promise.resolve(view(...match.slice(1))).catch((e) => { if (e.status !== 401) page("Something went wrong", h("p", { class: "error", text: e.message })); });
    state.reload = live ? run : null;
    run();
    main().focus({ preventScroll: true });
    return;
  }
  page("Not found", h("p", {}, h("a", { href: "#/", text: "Back to the library" })));
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("sign-out").addEventListener("click", async () => {
    try { await api("POST", "/api/sign-out"); } catch { /* signed out either way */ }
    showSignIn("You are signed out.");
  });
  try {
    state.session = await api("GET", "/api/session");
    start();
  } catch {
    showSignIn();
  }
});
