// warden dashboard: lists every session, follows /events, and drives the session routes.
// Plain JavaScript, no build step. The API key (when the gateway asks for one) is kept in
// sessionStorage and sent as a Bearer header; EventSource and <img> cannot send headers, so
// /events and /session/qr/ get it as ?api_key=.
"use strict";

const KEY_STORAGE = "warden.apiKey";
const STATES = [
  "stopped", "queued", "connecting", "waiting_for_scan", "pairing", "connected",
  "backing_off", "failed", "logged_out", "replaced", "banned", "qr_expired",
];
const LABELS = {
  stopped: "stopped", queued: "queued", connecting: "connecting",
  waiting_for_scan: "scan QR", pairing: "pairing", connected: "connected",
  backing_off: "retrying", failed: "failed", logged_out: "logged out",
  replaced: "replaced", banned: "banned", qr_expired: "QR expired",
};
const LIVE = new Set(["queued", "connecting", "waiting_for_scan", "pairing", "connected"]);

const sessions = new Map(); // token -> SessionView
const messages = new Map(); // token -> messages received since the page opened
const cards = new Map(); // token -> <article>
let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
let events = null;
let retryTimer = null;
// After `watching`: the sessions not mentioned yet, and the timer that drops them.
let unconfirmed = null;
let unconfirmedTimer = null;
// In a cluster, other nodes' sessions come at the stream's first look at the cluster: about
// a second, up to 5 s when a node is slow to answer.
const CONFIRM_WITHIN_MS = 10000;
let stateFilter = null;

const $ = (id) => document.getElementById(id);

// ---- API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.message || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401) {
    askForKey(Boolean(apiKey));
    throw new ApiError(401, data);
  }
  if (!response.ok || (data && data.success === false)) throw new ApiError(response.status, data);
  return data;
}

function withKey(path) {
  if (!apiKey) return path;
  const sep = path.includes("?") ? "&" : "?";
  return `${path}${sep}api_key=${encodeURIComponent(apiKey)}`;
}

// ---- the API key dialog ------------------------------------------------------------------

function askForKey(refused) {
  const dialog = $("key-dialog");
  $("key-error").hidden = !refused;
  $("key-button").hidden = false;
  if (!dialog.open) {
    $("key-input").value = "";
    dialog.showModal();
    $("key-input").focus();
  }
}

$("key-dialog").addEventListener("close", () => {
  const choice = $("key-dialog").returnValue;
  if (choice === "ok") {
    apiKey = $("key-input").value.trim();
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    connect();
  } else if (choice === "forget") {
    apiKey = "";
    sessionStorage.removeItem(KEY_STORAGE);
  }
});

$("key-button").addEventListener("click", () => askForKey(false));

// ---- toasts ------------------------------------------------------------------------------

function toast(text, kind = "info", action) {
  const el = document.createElement("div");
  el.className = `toast ${kind}`;
  const span = document.createElement("span");
  span.textContent = text;
  el.append(span);
  if (action) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = action.label;
    button.addEventListener("click", () => {
      el.remove();
      action.run();
    });
    el.append(button);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => el.remove());
  el.append(close);
  $("toasts").append(el);
  setTimeout(() => el.remove(), kind === "error" ? 12000 : 5000);
}

// ---- rendering ---------------------------------------------------------------------------

function ago(iso) {
  const secs = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (secs < 60) return `${secs}s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ${Math.floor((secs % 3600) / 60)}m ago`;
  return `${Math.floor(secs / 86400)}d ago`;
}

function phone(jid) {
  if (!jid) return "";
  const user = jid.split("@")[0].split(":")[0];
  return /^\d+$/.test(user) ? `+${user}` : user;
}

// A short fingerprint of a QR code, so its image is fetched again only when the code changes.
function hash(text) {
  let h = 5381;
  for (let i = 0; i < text.length; i += 1) h = ((h * 33) ^ text.charCodeAt(i)) >>> 0;
  return h.toString(36);
}

function matches(s) {
  if (stateFilter && s.state !== stateFilter) return false;
  const q = $("filter").value.trim().toLowerCase();
  if (!q) return true;
  return [s.name, s.token, s.jid || "", s.account_name || "", s.state, LABELS[s.state]]
    .some((v) => v.toLowerCase().includes(q));
}

function renderCounts() {
  const counts = {};
  for (const s of sessions.values()) counts[s.state] = (counts[s.state] || 0) + 1;
  const box = $("counts");
  box.replaceChildren();
  const total = document.createElement("button");
  total.type = "button";
  total.className = `chip${stateFilter ? "" : " active"}`;
  total.textContent = `all ${sessions.size}`;
  total.addEventListener("click", () => { stateFilter = null; renderAll(); });
  box.append(total);
  for (const state of STATES) {
    if (!counts[state]) continue;
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = `chip state-${state}${stateFilter === state ? " active" : ""}`;
    chip.dataset.state = state;
    chip.textContent = `${LABELS[state]} ${counts[state]}`;
    chip.addEventListener("click", () => {
      stateFilter = stateFilter === state ? null : state;
      renderAll();
    });
    box.append(chip);
  }
}

// A session's timeline, from its journal: the newest entries first, fetched when the card's
// "History" is opened and again after each change while it stays open.
const HISTORY_ENTRIES = 50;
const historyPending = new Set();

function historyLine(e) {
  const d = e.data || {};
  let what;
  switch (e.kind) {
    case "session.status":
      what = `${d.from || "created"} → ${d.to}`;
      if (d.reason) what += ` (${d.reason})`;
      if (d.attempts) what += ` · attempt ${d.attempts}`;
      if (d.next_retry_at) what += ` · next try ${new Date(d.next_retry_at).toLocaleTimeString()}`;
      break;
    case "session.operation": what = `${d.op} asked (${d.by})`; break;
    case "session.qr": what = "QR code issued"; break;
    case "session.pair_code": what = "pairing code issued"; break;
    case "message": what = `message from ${phone(d.sender || "")}`; break;
    case "message.status":
      what = d.new_chats_paused_until ? "new chats paused" : `message to ${phone(d.to || "")}: ${d.status}`;
      break;
    default: what = e.kind;
  }
  if (e.repeats > 1) what += ` ×${e.repeats}`;
  return what;
}

async function loadHistory(token, card, tries = 3) {
  if (historyPending.has(token)) return;
  historyPending.add(token);
  try {
    const h = await api("GET", `/session/history/${encodeURIComponent(token)}?limit=${HISTORY_ENTRIES}`);
    // A change is shown as soon as it happens, and committed to the journal just after: when
    // the newest entry is behind the card, look again shortly.
    const status = h.entries.filter((e) => e.kind === "session.status").pop();
    const s = sessions.get(token);
    if (tries > 0 && s && status && status.data.to !== s.state) {
      setTimeout(() => loadHistory(token, card, tries - 1), 300);
    }
    const list = card.querySelector(".timeline");
    list.replaceChildren(...h.entries.slice().reverse().map((e) => {
      const item = document.createElement("li");
      item.dataset.kind = e.kind;
      const time = document.createElement("time");
      time.dateTime = e.at;
      time.textContent = new Date(e.at).toLocaleTimeString();
      item.append(time, ` ${historyLine(e)}`);
      return item;
    }));
  } catch (e) {
    if (e.status !== 401) toast(`${token}: history: ${e.message}`, "error");
  } finally {
    historyPending.delete(token);
  }
}

function cardFor(token) {
  let card = cards.get(token);
  if (card) return card;
  card = $("card-template").content.firstElementChild.cloneNode(true);
  card.dataset.token = token;
  const history = card.querySelector(".history");
  history.addEventListener("toggle", () => { if (history.open) loadHistory(token, card); });
  for (const button of card.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", () => act(button.dataset.action, token, button));
  }
  cards.set(token, card);
  return card;
}

function setText(card, selector, text) {
  const el = card.querySelector(selector);
  if (el.textContent !== text) el.textContent = text;
}

function renderCard(s) {
  const card = cardFor(s.token);
  card.dataset.state = s.state;
  setText(card, ".name", s.name);
  setText(card, ".token", s.token);
  const badge = card.querySelector(".badge");
  badge.className = `badge state-${s.state}`;
  badge.dataset.state = s.state;
  const codeOnly = s.state === "waiting_for_scan" && !s.qr && s.pair_code;
  setText(card, ".badge", codeOnly ? "enter code" : LABELS[s.state] || s.state);
  const account = s.jid ? `${s.account_name ? `${s.account_name} · ` : ""}${phone(s.jid)}` : "not linked";
  setText(card, ".account", account);
  setText(card, ".attempts", String(s.attempts));
  let reason = s.reason || "—";
  if (s.next_retry_at) reason += ` · next try ${new Date(s.next_retry_at).toLocaleTimeString()}`;
  if (s.banned_until) reason += ` · banned until ${new Date(s.banned_until).toLocaleString()}`;
  if (s.why && LIVE.has(s.state) === false) {
    reason += ` · last disconnect: ${s.why.from} ended (${s.why.reason || "no reason"}) at ${new Date(s.why.at).toLocaleTimeString()}`;
  }
  setText(card, ".reason", reason);
  if (card.querySelector(".history").open) loadHistory(s.token, card);
  card.querySelector(".since").dataset.since = s.state_since;
  setText(card, ".since", ago(s.state_since));
  setText(card, ".messages", String(messages.get(s.token) || 0));

  const qrBox = card.querySelector(".qr");
  const img = card.querySelector(".qr-img");
  if (s.qr) {
    const src = withKey(`/session/qr/${encodeURIComponent(s.token)}?format=svg&v=${hash(s.qr.code)}`);
    if (img.dataset.src !== src) {
      img.dataset.src = src;
      img.src = src;
    }
    const expiry = card.querySelector(".qr-expiry");
    expiry.dataset.expires = s.qr.expires_at;
    expiry.textContent = expiresText(s.qr.expires_at);
    qrBox.hidden = false;
  } else {
    qrBox.hidden = true;
    if (img.dataset.src) {
      delete img.dataset.src;
      img.removeAttribute("src");
    }
  }
  const pair = card.querySelector(".pair");
  pair.hidden = !s.pair_code;
  setText(card, ".pair-code", s.pair_code || "");

  const running = s.desired === "running";
  const enable = {
    start: !LIVE.has(s.state),
    stop: running || LIVE.has(s.state),
    restart: true,
    refresh: ["waiting_for_scan", "qr_expired", "logged_out"].includes(s.state)
      || (["stopped", "failed"].includes(s.state) && !s.jid),
    "force-cleanup": true,
    "reset-reconnect": s.attempts > 0 || s.state === "failed",
    logout: Boolean(s.jid) && s.state !== "logged_out",
    delete: true,
  };
  for (const button of card.querySelectorAll("button[data-action]")) {
    if (!button.classList.contains("busy")) button.disabled = !enable[button.dataset.action];
  }
  card.hidden = !matches(s);
  return card;
}

function renderAll() {
  const grid = $("sessions");
  const ordered = [...sessions.values()].sort(
    (a, b) => a.name.localeCompare(b.name) || a.token.localeCompare(b.token),
  );
  const wanted = ordered.map(renderCard);
  // Reorder only when needed, so images and focus are left alone.
  wanted.forEach((card, i) => {
    if (grid.children[i] !== card) grid.insertBefore(card, grid.children[i] || null);
  });
  while (grid.children.length > wanted.length) grid.lastElementChild.remove();
  for (const token of [...cards.keys()]) if (!sessions.has(token)) cards.delete(token);
  $("empty").hidden = sessions.size !== 0;
  $("no-match").hidden = sessions.size === 0 || wanted.some((c) => !c.hidden);
  renderCounts();
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderAll();
  });
}

function upsert(view) {
  sessions.set(view.token, view);
  scheduleRender();
}

// An answer to a request may arrive after newer events: while the stream is live, it is
// the source of truth.
function upsertReply(view) {
  if (!events || events.readyState !== EventSource.OPEN) upsert(view);
}

function expiresText(iso) {
  const left = Math.round((Date.parse(iso) - Date.now()) / 1000);
  return left > 0 ? `Expires in ${left}s.` : "Expired: a new one is on its way.";
}

setInterval(() => {
  for (const el of document.querySelectorAll(".since[data-since]")) el.textContent = ago(el.dataset.since);
  for (const el of document.querySelectorAll(".qr-expiry[data-expires]")) {
    el.textContent = expiresText(el.dataset.expires);
  }
}, 1000);

$("filter").addEventListener("input", scheduleRender);

// ---- live updates ------------------------------------------------------------------------

function setLive(on, text) {
  const live = $("live");
  live.className = `live ${on ? "on" : "off"}`;
  live.textContent = text;
}

function listen() {
  if (events) events.close();
  clearTimeout(retryTimer);
  clearTimeout(unconfirmedTimer);
  unconfirmed = null;
  events = new EventSource(withKey("/events"));
  const data = (e) => JSON.parse(e.data);
  events.addEventListener("watching", () => {
    // The stream starts again from the current state: a session it does not mention soon
    // (other nodes' come within a second or so) is gone.
    unconfirmed = new Set(sessions.keys());
    clearTimeout(unconfirmedTimer);
    unconfirmedTimer = setTimeout(() => {
      for (const token of unconfirmed) sessions.delete(token);
      unconfirmed = null;
      scheduleRender();
    }, CONFIRM_WITHIN_MS);
    setLive(true, "live");
    scheduleRender();
  });
  events.addEventListener("session", (e) => {
    const view = data(e).session;
    if (unconfirmed) unconfirmed.delete(view.token);
    upsert(view);
  });
  events.addEventListener("qr", (e) => {
    const { token, code, expires_in_secs: secs } = data(e);
    const s = sessions.get(token);
    if (s && (!s.qr || s.qr.code !== code)) {
      upsert({ ...s, qr: { code, expires_at: new Date(Date.now() + secs * 1000).toISOString() } });
    }
  });
  events.addEventListener("pair_code", (e) => {
    const { token, code } = data(e);
    const s = sessions.get(token);
    if (s) upsert({ ...s, pair_code: code });
  });
  events.addEventListener("message", (e) => {
    const { token } = data(e);
    messages.set(token, (messages.get(token) || 0) + 1);
    scheduleRender();
  });
  events.addEventListener("removed", (e) => {
    sessions.delete(data(e).token);
    scheduleRender();
  });
  events.addEventListener("closed", () => setLive(false, "reconnecting…"));
  events.onerror = () => {
    setLive(false, "reconnecting…");
    if (events.readyState === EventSource.CLOSED) {
      // Refused (e.g. 401) or the daemon went away: find out why, then try again.
      retryTimer = setTimeout(connect, 3000);
    }
  };
}

async function connect() {
  try {
    const list = await api("GET", "/sessions");
    sessions.clear();
    for (const item of list.sessions) sessions.set(item.token, item.session);
    scheduleRender();
    listen();
  } catch (e) {
    if (e.status !== 401) {
      setLive(false, "offline");
      retryTimer = setTimeout(connect, 3000);
    }
  }
}

// ---- actions -----------------------------------------------------------------------------

const ACTIONS = {
  start: { method: "POST", path: (t) => `/session/start/${t}`, done: "Started" },
  stop: { method: "POST", path: (t) => `/session/stop/${t}`, done: "Stopped" },
  restart: { method: "POST", path: (t) => `/session/restart/${t}`, done: "Restarted" },
  refresh: { method: "POST", path: (t) => `/session/refresh/${t}`, done: "New QR code requested" },
  "force-cleanup": { method: "POST", path: (t) => `/session/force-cleanup/${t}`, done: "Cleaned up" },
  "reset-reconnect": { method: "POST", path: (t) => `/session/reset-reconnect/${t}`, done: "Reconnect attempts reset" },
  logout: {
    method: "POST", path: (t) => `/session/logout/${t}`, done: "Logged out",
    confirm: (s) => `Log out ${s.name}? Its credentials are deleted; linking again needs a new QR scan.`,
  },
  delete: {
    method: "DELETE", path: (t) => `/session/${t}`, done: "Deleted",
    confirm: (s) => `Delete ${s.name} (${s.token})? Its folder and credentials are removed for good.`,
  },
};

async function act(action, token, button, force = false) {
  const spec = ACTIONS[action];
  const s = sessions.get(token);
  if (!spec || !s) return;
  if (spec.confirm && !window.confirm(spec.confirm(s))) return;
  button.classList.add("busy");
  button.disabled = true;
  try {
    let path = spec.path(encodeURIComponent(token));
    if (force) path += "?force=true";
    const reply = await api(spec.method, path);
    if (reply && reply.session) upsertReply(reply.session);
    toast(`${s.name}: ${spec.done}`, "ok");
  } catch (e) {
    if (e.status === 401) return;
    if (e.status === 429 && action === "restart") {
      toast(`${s.name}: ${e.message}`, "error", {
        label: "Restart anyway",
        run: () => act("restart", token, button, true),
      });
    } else {
      toast(`${s.name}: ${e.message}`, "error");
    }
  } finally {
    button.classList.remove("busy");
    scheduleRender();
  }
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const name = form.elements.name.value.trim();
  const token = form.elements.token.value.trim();
  const phoneNumber = form.elements.phone.value.replace(/[^\d]/g, "");
  const startNow = form.elements.start.checked || Boolean(phoneNumber);
  const button = $("create-button");
  button.disabled = true;
  try {
    const body = {};
    if (name) body.name = name;
    if (token) body.token = token;
    const created = await api("POST", "/session", body);
    upsertReply(created.session);
    toast(`Created ${created.name}`, "ok");
    form.reset();
    if (startNow) {
      // The answer can take a while (it waits for the QR code); the events show it sooner.
      api("POST", `/session/start/${encodeURIComponent(created.token)}`, phoneNumber ? { phone: phoneNumber } : undefined)
        .then((reply) => reply && reply.session && upsertReply(reply.session))
        .catch((e) => e.status !== 401 && toast(`${created.name}: ${e.message}`, "error"));
    }
  } catch (e) {
    if (e.status !== 401) toast(e.message, "error");
  } finally {
    button.disabled = false;
  }
});

connect();
