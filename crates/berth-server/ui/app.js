// The berth console: signed in with a berth token (kept for this tab only), it follows the
// cluster through one Watch stream (server-sent events over fetch, so the token travels in a
// header) and renders from what it holds. Every element is built with the DOM API and every
// text set as text: nothing from the cluster is ever parsed as HTML.
"use strict";

const state = {
  token: sessionStorage.getItem("berth.token"),
  session: null,
  namespace: null,
  namespaces: [],
  cluster: null,
  tasks: new Map(),
  services: new Map(),
  nodes: new Map(),
  synced: false,
  // The last revision the Watch stream carried: a stream that breaks resumes after it.
  revision: 0,
  // Nodes with what every namespace's tasks reserve on them (admins only).
  nodeUse: null,
  // Bumped at each sign-in, so that one poller runs per session.
  generation: 0,
  view: "cluster",
  selectedTask: null,
  watch: null,
  logs: null,
  error: "",
};

// ---- DOM helpers ---------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "disabled" || k === "hidden") el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// A bar of `used` out of `total`: capacity (nearly full is a warning) or, with `progress`,
// how far something got (full is done).
function bar(used, total, unit, progress) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const fill = h("span");
  fill.style.width = pct.toFixed(1) + "%";
  const kind = progress ? (pct >= 100 ? "bar done" : "bar") : (pct >= 90 ? "bar full" : "bar");
  return h("div", { class: "bar-cell" },
    h("div", { class: kind, title: `${used} of ${total} ${unit}` }, fill),
    h("span", { class: "bar-label" }, `${used} / ${total} ${unit}`));
}

function pill(text, kind) {
  return h("span", { class: "pill " + (kind || "") }, text);
}

function statusKind(s) {
  if (s === "RUNNING" || s === "ACTIVE" || s === "COMPLETED" || s === "HEALTHY" || s === "leader") return "ok";
  if (s === "STOPPED" || s === "FAILED" || s === "DOWN" || s === "UNHEALTHY") return "bad";
  return "warn";
}

function when(rfc3339) {
  if (!rfc3339) return "";
  const d = new Date(rfc3339);
  const secs = Math.round((Date.now() - d.getTime()) / 1000);
  if (secs < 60) return `${Math.max(secs, 0)}s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ago`;
  return d.toISOString().slice(0, 16).replace("T", " ");
}

function events(list, limit) {
  const shown = (list || []).slice(-limit).reverse();
  if (!shown.length) return h("p", { class: "muted" }, "no events");
  return h("ul", { class: "events" },
    shown.map((e) => h("li", {}, h("time", { datetime: e.at, title: e.at }, when(e.at)), e.message)));
}

// ---- API -----------------------------------------------------------------------------------

// One call of the console's API. Every call is idempotent (reads, and "scale to N"), so one
// cut by the network is made again, twice at most.
async function api(path, options) {
  const opts = options || {};
  let response;
  for (let attempt = 1; ; attempt++) {
    try {
      response = await fetch("api/" + path, {
        ...opts,
        headers: { ...(opts.headers || {}), Authorization: "Bearer " + state.token },
      });
      break;
    } catch (err) {
      if (attempt >= 3) throw err;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error(body.error || response.statusText);
    err.status = response.status;
    throw err;
  }
  return body;
}

// How long a stream may stay silent: the server sends a comment every 15 s.
const STREAM_IDLE_MS = 45000;

// Reads a stream of server-sent events, calling `onEvent` with each event's JSON; gives up
// (aborts `controller`) after STREAM_IDLE_MS without a byte.
async function stream(path, onEvent, controller) {
  let idle = setTimeout(() => controller.abort(), STREAM_IDLE_MS);
  const alive = () => {
    clearTimeout(idle);
    idle = setTimeout(() => controller.abort(), STREAM_IDLE_MS);
  };
  try {
    await readStream(path, onEvent, controller.signal, alive);
  } finally {
    clearTimeout(idle);
  }
}

async function readStream(path, onEvent, signal, alive) {
  const response = await fetch("api/" + path, {
    headers: { Authorization: "Bearer " + state.token },
    signal,
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const err = new Error(body.error || response.statusText);
    err.status = response.status;
    throw err;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    alive();
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of chunk.split("\n")) {
        if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
      }
    }
  }
}

// ---- The live state ------------------------------------------------------------------------

function apply(e) {
  const maps = { task: state.tasks, service: state.services, node: state.nodes };
  if (e.revision > state.revision) state.revision = e.revision;
  // A stream that resumed too far behind starts over with every object: forget the old ones.
  if (e.type === "SYNC" && state.synced) {
    state.tasks.clear();
    state.services.clear();
    state.nodes.clear();
    state.synced = false;
  }
  if (e.type === "SYNCED") {
    state.synced = true;
    if (state.error.startsWith("watch:")) state.error = "";
    schedule();
    return;
  }
  const map = maps[e.kind];
  if (!map) return;
  const key = e.namespace ? e.namespace + "/" + e.name : e.name;
  if (e.type === "DELETED") map.delete(key);
  else if (e.object) map.set(key, e.object);
  schedule();
}

// Follows the namespace's objects; `resume`: after the last revision seen (a broken stream),
// else from scratch (a new namespace, a new session).
function watch(resume) {
  if (state.watch) state.watch.abort();
  const controller = new AbortController();
  state.watch = controller;
  if (!resume) {
    state.tasks.clear();
    state.services.clear();
    state.nodes.clear();
    state.synced = false;
    state.revision = 0;
  }
  const ns = encodeURIComponent(state.namespace || "");
  const from = resume ? state.revision : 0;
  stream(`watch?namespace=${ns}&from=${from}`, apply, controller)
    .catch((err) => {
      if (err.status === 401 || err.status === 403) {
        state.error = err.message;
        signOut();
        return;
      }
      if (state.watch === controller) state.error = "watch: " + err.message + " (reconnecting)";
    })
    .finally(() => {
      // Ended by the server (a heartbeat found the token no longer valid) or cut: resume.
      if (state.watch !== controller || !state.token) return;
      setTimeout(() => state.watch === controller && state.token && watch(true), 1000);
    });
}

async function pollCluster(generation) {
  if (!state.token || generation !== state.generation) return;
  try {
    state.cluster = await api("cluster");
    if (state.session && state.session.admin) {
      state.namespaces = await api("namespaces");
      state.nodeUse = await api("nodes");
    }
    if (state.error.startsWith("cluster:")) state.error = "";
  } catch (err) {
    if (err.status === 401) {
      state.error = err.message;
      signOut();
      return;
    }
    state.cluster = null;
    state.error = "cluster: " + err.message;
  }
  schedule();
  setTimeout(() => pollCluster(generation), 2000);
}

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    render();
  });
}

function signInView() {
  const input = h("input", { type: "password", id: "token", placeholder: "berth_…", autocomplete: "off" });
  const note = h("p", { class: "error" }, state.error);
  const form = h("form", { class: "card sign-in", onsubmit: (e) => { e.preventDefault(); signIn(input.value.trim()); } },
    h("h2", {}, "Sign in"),
    h("p", { class: "muted" }, "with a berth token (`berth token create`); its namespace and role apply here."),
    input,
    h("button", { class: "primary", type: "submit", id: "sign-in" }, "Sign in"),
    note);
  return form;
}

function render() {
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  document.getElementById("sign-out").hidden = !state.session;
  nav.hidden = !state.session;
  document.getElementById("who").textContent = state.session ? state.session.who : "";
  if (!state.session) {
    main.replaceChildren(signInView());
    return;
  }
  for (const b of nav.querySelectorAll("button")) b.classList.toggle("active", b.dataset.view === state.view);
  const picker = document.getElementById("namespace");
  const names = state.session.namespace ? [state.session.namespace] : state.namespaces.map((n) => n.name);
  if (picker.options.length !== names.length) {
    picker.replaceChildren(...names.map((n) => h("option", { value: n, selected: n === state.namespace }, n)));
  }
  const view = { cluster: clusterView, services: servicesView, tasks: tasksView, usage: usageView }[state.view]();
  main.replaceChildren(view);
  main.dataset.view = state.view;
  main.dataset.synced = state.synced ? "1" : "0";
  // When the page first held every object and drew them (the console benchmark reads it).
  if (state.synced && !document.documentElement.dataset.syncedMs) {
    document.documentElement.dataset.syncedMs = String(Math.round(performance.now()));
  }
  document.getElementById("status").textContent = state.error
    ? state.error
    : `${state.synced ? "live" : "syncing"} · ${state.tasks.size} tasks · ${state.services.size} services · ${state.nodes.size} nodes`;
}

async function signIn(token) {
  state.token = token;
  state.error = "";
  try {
    state.session = await api("session");
  } catch (err) {
    state.token = null;
    state.session = null;
    state.error = err.message;
    render();
    return;
  }
  sessionStorage.setItem("berth.token", token);
  state.namespace = state.session.namespace || "default";
  state.generation += 1;
  watch(false);
  pollCluster(state.generation);
  sampleScaling(state.generation);
  render();
}

function signOut() {
  sessionStorage.removeItem("berth.token");
  const watching = state.watch;
  state.watch = null;
  if (watching) watching.abort();
  closeDetail();
  Object.assign(state, {
    token: null, session: null, watch: null, selectedTask: null, cluster: null,
    namespaces: [], nodeUse: null, revision: 0, synced: false,
  });
  state.tasks.clear();
  state.services.clear();
  state.nodes.clear();
  state.generation += 1;
  cards.clear();
  taskRows.clear();
  scalingHistory.clear();
  usage.data = null;
  usage.el = null;
  render();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("#nav button")) {
    b.addEventListener("click", () => { state.view = b.dataset.view; schedule(); });
  }
  document.getElementById("sign-out").addEventListener("click", () => {
    state.error = "";
    signOut();
  });
  document.getElementById("namespace").addEventListener("change", (e) => {
    state.namespace = e.target.value;
    state.selectedTask = null;
    closeDetail();
    usage.data = null;
    usage.el = null;
    cards.clear();
    taskRows.clear();
    watch(false);
  });
  if (state.token) signIn(state.token);
  else render();
});
