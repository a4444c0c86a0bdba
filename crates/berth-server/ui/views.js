// The berth console's views (Cluster, Services, Tasks, Usage), each built from what the page
// holds; loaded after app.js, whose helpers (h, api, stream, schedule, state) they use.
"use strict";

// ---- Views ---------------------------------------------------------------------------------

function clusterView() {
  const c = state.cluster;
  const servers = c
    ? h("table", { id: "servers" },
        h("tr", {}, h("th", {}, "server"), h("th", {}, "address"), h("th", {}, "role"), h("th", {}, "replicated to"), h("th", {}, "health")),
        c.members.map((m) => {
          // As the answering server sees it: how far the member's log is behind the commit index
          // (unknown on a follower, which does not track its peers).
          const known = m.matchIndex !== undefined && m.matchIndex !== null;
          const behind = known ? Math.max(0, c.commitIndex - m.matchIndex) : null;
          const health = !known ? pill("unknown here", "") : behind === 0 ? pill("in sync", "ok")
            : behind < 100 ? pill(`${behind} behind`, "warn") : pill(`${behind} behind`, "bad");
          return h("tr", {},
            h("td", {}, m.id), h("td", {}, m.address), h("td", {}, pill(m.role, statusKind(m.role))),
            h("td", {}, known ? m.matchIndex : ""), h("td", {}, health));
        }))
    : h("p", { class: "muted" }, "reading the cluster's status…");
  const live = [...state.tasks.values()].filter((t) => t.lastStatus !== "STOPPED");
  // What the live tasks on each node reserve (the stored node holds its offer).
  const perNode = new Map();
  for (const t of live) {
    if (!t.node) continue;
    const n = perNode.get(t.node) || { tasks: 0, cpu: 0, memory: 0 };
    n.tasks += 1;
    n.cpu += t.cpu;
    n.memory += t.memory;
    perNode.set(t.node, n);
  }
  const none = { tasks: 0, cpu: 0, memory: 0 };
  // An admin sees what every namespace reserves (from the nodes' allocations); a namespace's
  // token, what its own tasks reserve.
  const everyNamespace = new Map((state.nodeUse || []).map((n) => [n.name, n]));
  const reserved = (n) => {
    const all = everyNamespace.get(n.name);
    return all ? { cpu: all.cpu.allocated, memory: all.memory.allocated } : (perNode.get(n.name) || none);
  };
  const nodes = [...state.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
  return h("section", {},
    h("h2", {}, "Servers"),
    c ? h("div", { class: "counts" },
      h("div", {}, h("b", {}, c.term), h("span", {}, "term")),
      h("div", {}, h("b", {}, c.commitIndex), h("span", {}, "commit index")),
      h("div", {}, h("b", {}, c.appliedIndex), h("span", {}, "applied here")),
      h("div", {}, h("b", {}, c.leader ?? "none"), h("span", {}, "leader"))) : null,
    servers,
    h("h2", {}, "Nodes"),
    state.nodeUse ? null : h("p", { class: "muted" }, "reserved by this namespace's tasks"),
    h("table", { id: "nodes" },
      h("tr", {}, h("th", {}, "node"), h("th", {}, "status"), h("th", {}, "CPU (units)"),
        h("th", {}, "memory (MiB)"), h("th", {}, "tasks here"), state.session.admin ? h("th", {}) : null, h("th", {}, "attributes")),
      nodes.map((n) => h("tr", {},
        h("td", {}, n.name), h("td", {}, pill(n.status, statusKind(n.status))),
        h("td", {}, bar(reserved(n).cpu, n.cpu.total, "")),
        h("td", {}, bar(reserved(n).memory, n.memory.total, "")),
        h("td", {}, (perNode.get(n.name) || none).tasks),
        state.session.admin ? h("td", {}, nodeButton(n)) : null,
        h("td", { class: "muted" }, Object.entries(n.attributes || {}).map(([k, v]) => `${k}=${v}`).join(", "))))),
    state.namespaces.length ? [
      h("h2", {}, "Namespaces"),
      h("table", { id: "namespaces" },
        h("tr", {}, h("th", {}, "namespace"), h("th", {}, "tasks"), h("th", {}, "CPU"), h("th", {}, "memory")),
        state.namespaces.map((ns) => {
          const u = ns.usage || { tasks: 0, cpu: 0, memory: 0 };
          const q = ns.quota || {};
          const cell = (used, limit, unit) =>
            limit ? bar(used, limit, unit) : h("span", {}, `${used} ${unit} (no quota)`);
          return h("tr", {}, h("td", {}, ns.name), h("td", {}, cell(u.tasks, q.tasks, "")),
            h("td", {}, cell(u.cpu, q.cpu, "units")), h("td", {}, cell(u.memory, q.memory, "MiB")));
        })),
    ] : null);
}

// Drain a node (its service tasks move elsewhere, nothing new is placed there) or activate it.
function nodeButton(n) {
  if (n.status === "DOWN") return "";
  const next = n.status === "ACTIVE" ? "DRAINING" : "ACTIVE";
  return h("button", {
    type: "button", "data-node-action": next,
    onclick: async (e) => {
      if (next === "DRAINING" && !window.confirm(`Drain ${n.name}? Its service tasks move to other nodes.`)) return;
      e.target.disabled = true;
      try {
        await api("node", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ name: n.name, status: next }),
        });
      } catch (err) {
        state.error = "node: " + err.message;
        schedule();
      }
    },
  }, next === "DRAINING" ? "Drain" : "Activate");
}

async function scale(service, input, note) {
  const text = input.value.trim();
  note.className = "muted";
  if (!/^[0-9]+$/.test(text)) {
    note.className = "error";
    note.textContent = "the desired count is a whole number, 0 or more";
    return false;
  }
  const count = Number(text);
  note.textContent = "scaling…";
  try {
    await api("scale?namespace=" + encodeURIComponent(service.namespace), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: service.name, desiredCount: count }),
    });
    note.textContent = `desired count set to ${count}`;
    return true;
  } catch (err) {
    note.textContent = err.message;
    note.className = "error";
    return false;
  }
}

// Each service's card is made once and updated in place: what the user types into it, and
// elements a script holds, survive the updates that arrive every second.
const cards = new Map();

function serviceCard(s) {
  const key = s.namespace + "/" + s.name;
  let c = cards.get(key);
  if (!c) {
    c = { dirty: false };
    c.input = h("input", {
      type: "number", min: 0, "aria-label": "desired count",
      oninput: () => { c.dirty = true; },
    });
    c.note = h("span", { class: "muted" });
    c.button = h("button", {
      class: "primary", type: "button", "data-action": "scale",
      onclick: async () => {
        if (await scale(c.current, c.input, c.note)) c.dirty = false;
      },
    }, "Scale");
    c.readOnly = h("span", { class: "muted" }, "read-only token");
    const act = (action, label, confirmText) => h("button", {
      type: "button", "data-action": action,
      onclick: () => serviceAction(c, action, confirmText),
    }, label);
    c.rollBack = act("rollback", "Roll back", null);
    c.promote = act("promote", "Promote canary", null);
    c.remove = act("delete", "Delete", "Delete service %s? Its tasks are stopped.");
    c.title = h("h3");
    c.body = h("div");
    c.chart = h("div", { class: "chart small", hidden: true });
    c.root = h("div", { class: "card service", "data-service": s.name },
      c.title,
      h("div", { class: "toolbar" }, c.input, c.button, c.rollBack, c.promote, c.remove, c.readOnly, c.note),
      c.body, c.chart);
    cards.set(key, c);
  }
  c.current = s;
  const write = Boolean(state.session && state.session.write);
  c.button.disabled = !write;
  c.button.title = write ? "set the desired count" : "a viewer token cannot scale";
  c.readOnly.hidden = write;
  c.input.disabled = !write;
  for (const b of [c.rollBack, c.promote, c.remove]) b.hidden = !write;
  const dc = s.deploymentConfiguration || {};
  c.promote.hidden = !write || dc.strategy !== "canary" || (s.deployments || []).length < 2;
  autoscalingChart(c, s);
  if (!c.dirty && document.activeElement !== c.input) c.input.value = s.desiredCount;
  const healthy = (s.deployments || []).reduce((n, d) => n + (d.healthyCount || 0), 0);
  const breaker = s.deploymentConfiguration && s.deploymentConfiguration.circuitBreaker;
  const auto = s.autoscaling;
  c.title.replaceChildren(s.name, " ", pill(s.status, statusKind(s.status)));
  c.body.replaceChildren(
    h("div", { class: "counts" },
      h("div", {}, h("b", { class: "desired" }, s.desiredCount), h("span", {}, "desired")),
      h("div", {}, h("b", { class: "running" }, s.runningCount), h("span", {}, "running")),
      h("div", {}, h("b", {}, s.pendingCount), h("span", {}, "pending")),
      h("div", {}, h("b", {}, healthy), h("span", {}, "healthy"))),
    h("p", { class: "muted" }, "task definition ", s.taskDefinition,
      breaker ? ` · circuit breaker ${breaker.enable ? "on" : "off"}${breaker.rollback ? ", rolls back" : ""}` : "",
      auto ? ` · autoscaling ${auto.minCount}–${auto.maxCount}` : ""),
    h("table", { class: "deployments" },
      h("tr", {}, h("th", {}, "deployment"), h("th", {}, "status"), h("th", {}, "task definition"),
        h("th", {}, "progress"), h("th", {}, "rollout")),
      (s.deployments || []).map((d) => h("tr", {},
        h("td", {}, d.id.slice(0, 8)), h("td", {}, d.status), h("td", {}, d.taskDefinition),
        h("td", {}, bar(d.runningCount, d.desiredCount, "running", true)),
        h("td", {}, pill(d.rolloutState, statusKind(d.rolloutState)), " ", h("span", { class: "muted" }, d.rolloutStateReason || ""))))),
    h("h3", {}, "Recent events"),
    events(s.events, 6));
  return c.root;
}

async function serviceAction(c, action, confirmText) {
  const s = c.current;
  if (confirmText && !window.confirm(confirmText.replace("%s", s.name))) return;
  c.note.className = "muted";
  c.note.textContent = action + "…";
  try {
    await api("service?namespace=" + encodeURIComponent(s.namespace), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: s.name, action }),
    });
    c.note.textContent = { rollback: "rolling back", promote: "promoted", delete: "deleting" }[action];
  } catch (err) {
    c.note.className = "error";
    c.note.textContent = err.message;
  }
}

// ---- Autoscaling: each metric against its target, and the desired count, over time ----------

// Samples of services with autoscaling, taken while the page is open (the server keeps the
// current values only): namespace/name -> [{t, desired, values: {metric: [value, target]}}].
const scalingHistory = new Map();
const SCALING_SAMPLES = 360;

async function sampleScaling(generation) {
  if (!state.token || generation !== state.generation) return;
  const scaled = [...state.services.values()].filter((s) => s.autoscaling);
  for (const s of scaled) {
    try {
      const now = await api(`service?namespace=${encodeURIComponent(s.namespace)}&name=${encodeURIComponent(s.name)}`);
      const key = s.namespace + "/" + s.name;
      const list = scalingHistory.get(key) || [];
      const values = {};
      for (const m of now.metrics || []) values[m.metric] = [m.value, m.target];
      list.push({ t: Date.now() / 1000, desired: now.desiredCount, values });
      while (list.length > SCALING_SAMPLES) list.shift();
      scalingHistory.set(key, list);
    } catch (err) {
      // The next round tries again.
    }
  }
  if (scaled.length) schedule();
  setTimeout(() => sampleScaling(generation), 5000);
}

function autoscalingChart(c, s) {
  const history = scalingHistory.get(s.namespace + "/" + s.name) || [];
  c.chart.hidden = !s.autoscaling || history.length < 2;
  if (c.chart.hidden || typeof uPlot === "undefined") return;
  const metrics = [...new Set(history.flatMap((p) => Object.keys(p.values)))].sort();
  const data = [history.map((p) => p.t)];
  const series = [{}];
  const palette = ["#2f6fde", "#d99a1e", "#7a4fd6", "#1c9aa6"];
  metrics.forEach((m, i) => {
    data.push(history.map((p) => (p.values[m] ? p.values[m][0] : null)));
    series.push({ label: m, stroke: palette[i % palette.length], width: 2, scale: "metric" });
    data.push(history.map((p) => (p.values[m] ? p.values[m][1] : null)));
    series.push({ label: m + " target", stroke: palette[i % palette.length], dash: [6, 4], width: 1, scale: "metric" });
  });
  data.push(history.map((p) => p.desired));
  series.push({ label: "desired count", stroke: "#2e9e5b", width: 2, scale: "count", paths: uPlot.paths.stepped({ align: 1 }) });
  const signature = series.map((x) => x.label).join("|");
  if (!c.plot || c.plotSignature !== signature) {
    if (c.plot) c.plot.destroy();
    c.chart.replaceChildren();
    const width = Math.max(c.root.clientWidth - 40, 400);
    c.plot = new uPlot({
      width, height: 200, series,
      axes: [{}, { scale: "metric", label: "metric" }, { scale: "count", side: 1, label: "tasks" }],
    }, data, c.chart);
    c.plotSignature = signature;
  } else {
    c.plot.setData(data);
  }
}

function servicesView() {
  const services = [...state.services.values()].sort((a, b) => a.name.localeCompare(b.name));
  if (!services.length) {
    return h("p", { class: "muted" }, state.synced ? "no services in this namespace" : "loading…");
  }
  return h("section", { id: "services" }, services.map(serviceCard));
}

const filters = { service: "", status: "live", node: "", label: "" };

function taskMatches(t) {
  if (filters.status === "live" && t.lastStatus === "STOPPED") return false;
  if (filters.status !== "live" && filters.status !== "all" && t.lastStatus !== filters.status) return false;
  if (filters.service && t.group !== "service:" + filters.service) return false;
  if (filters.node && t.node !== filters.node) return false;
  if (filters.label) {
    const [k, v] = filters.label.split("=");
    if (!t.labels || (v === undefined ? !(k in t.labels) : t.labels[k] !== v)) return false;
  }
  return true;
}

// A filter's select, made once; its options change only when the choices do (an open list
// stays open while the cluster changes).
const filterEls = {};

function filterSelect(name, options) {
  let el = filterEls[name];
  if (!el) {
    el = h("select", { "aria-label": name, onchange: (e) => { filters[name] = e.target.value; schedule(); } });
    filterEls[name] = el;
  }
  const signature = options.map(([v]) => v).join("\u0000");
  if (el.dataset.options !== signature) {
    el.replaceChildren(...options.map(([value, text]) => h("option", { value, selected: filters[name] === value }, text)));
    el.dataset.options = signature;
  }
  return el;
}

function labelFilter() {
  if (!filterEls.label) {
    const input = h("input", { type: "search", placeholder: "label key=value", "aria-label": "label" });
    input.addEventListener("change", () => { filters.label = input.value.trim(); schedule(); });
    filterEls.label = input;
  }
  return filterEls.label;
}

// The most log text a task's view keeps (the oldest goes first).
const LOG_KEEP = 2000;

// The selected task's detail: made once per selection (its logs keep following), its facts
// updated at every render.
let detail = { key: null, root: null, facts: null, logs: null };

function closeDetail() {
  if (state.logs) state.logs.abort();
  state.logs = null;
  if (detail.plot) detail.plot.destroy();
  detail = { key: null, root: null, facts: null, logs: null };
}

// The selected task's CPU and memory, sampled from its node's reports (every 2 s while it is
// selected), against what it reserves.
async function sampleTask(key, t) {
  if (detail.key !== key || !state.token) return;
  try {
    const now = await api(`task?namespace=${encodeURIComponent(t.namespace)}&task=${encodeURIComponent(t.taskId)}`);
    const m = now.metrics;
    if (m && detail.key === key) {
      const at = new Date(m.sampledAt).getTime() / 1000;
      const samples = detail.samples;
      if (!samples.length || samples[samples.length - 1].t !== at) {
        samples.push({ t: at, cpu: m.cpuUnits, memory: m.memoryBytes / (1024 * 1024), cpuReserved: now.cpu, memoryReserved: now.memory });
        while (samples.length > 300) samples.shift();
        drawTaskChart();
      }
    }
  } catch (err) {
    // The next sample tries again.
  }
  setTimeout(() => sampleTask(key, t), 2000);
}

function drawTaskChart() {
  const samples = detail.samples;
  if (!detail.chart || samples.length < 2 || typeof uPlot === "undefined") return;
  detail.chart.hidden = false;
  const data = [
    samples.map((p) => p.t),
    samples.map((p) => p.cpu), samples.map((p) => p.cpuReserved),
    samples.map((p) => p.memory), samples.map((p) => p.memoryReserved),
  ];
  if (!detail.plot) {
    const width = Math.max(detail.root.clientWidth - 40, 320);
    detail.plot = new uPlot({
      width, height: 180,
      series: [{},
        { label: "CPU units", stroke: "#2f6fde", width: 2, scale: "cpu" },
        { label: "CPU reserved", stroke: "#2f6fde", dash: [6, 4], scale: "cpu" },
        { label: "memory MiB", stroke: "#d99a1e", width: 2, scale: "mib" },
        { label: "memory reserved", stroke: "#d99a1e", dash: [6, 4], scale: "mib" }],
      axes: [{}, { scale: "cpu", label: "CPU units" }, { scale: "mib", side: 1, label: "MiB" }],
    }, data, detail.chart);
  } else {
    detail.plot.setData(data);
  }
}

function openDetail(key, t) {
  closeDetail();
  const logs = h("pre", { class: "logs", id: "logs" });
  const facts = h("div");
  const controller = new AbortController();
  state.logs = controller;
  const path = `logs?namespace=${encodeURIComponent(t.namespace)}&task=${encodeURIComponent(t.taskId)}&follow=1`;
  const append = (text, stderr) => {
    logs.append(h("span", { class: stderr ? "stderr" : "" }, text));
    while (logs.childNodes.length > LOG_KEEP) logs.firstChild.remove();
    logs.scrollTop = logs.scrollHeight;
  };
  stream(path, (chunk) => {
    if (chunk.error) append(chunk.error + "\n", true);
    else append(chunk.text, chunk.stderr);
  }, controller).catch((err) => {
    if (state.logs === controller) append(`logs: ${err.message}\n`, true);
  });
  const chart = h("div", { class: "chart small", id: "task-chart", hidden: true });
  detail = {
    key,
    facts,
    logs,
    chart,
    samples: [],
    plot: null,
    root: h("div", { class: "card", id: "task-detail" }, facts, chart, h("h3", {}, "Logs (following)"), logs),
  };
  sampleTask(key, t);
}

function taskFacts(t) {
  return [
    h("h3", {}, "Task ", t.taskId),
    h("p", {}, pill(t.lastStatus, statusKind(t.lastStatus)), " desired ", t.desiredStatus,
      " · ", t.taskDefinition, t.node ? " · on " + t.node : "",
      t.ipAddress ? " · " + t.ipAddress : ""),
    t.stopCode ? h("p", { class: "error" }, t.stopCode, ": ", t.stoppedReason || "") : null,
    h("table", {},
      h("tr", {}, h("th", {}, "container"), h("th", {}, "image"), h("th", {}, "status"), h("th", {}, "health"), h("th", {}, "exit code"), h("th", {}, "reason")),
      (t.containers || []).map((c) => h("tr", {},
        h("td", {}, c.name), h("td", {}, c.image), h("td", {}, c.lastStatus), h("td", {}, c.healthStatus),
        h("td", {}, c.exitCode ?? ""), h("td", {}, c.reason || "")))),
    h("h3", {}, "Events"),
    events(t.events, 50),
  ];
}

// The task table and its rows are made once and updated in place (a row a user is about to
// click stays the element it was).
const taskRows = new Map();
let taskTableEl = null;

function taskTable(tasks) {
  if (!taskTableEl) {
    taskTableEl = h("table", { id: "tasks" },
      h("tr", {}, h("th", {}, "task"), h("th", {}, "status"), h("th", {}, "definition"),
        h("th", {}, "group"), h("th", {}, "node"), h("th", {}, "created")));
  }
  const keep = new Set();
  const rows = tasks.map((t) => {
    const key = t.namespace + "/" + t.taskId;
    keep.add(key);
    let tr = taskRows.get(key);
    if (!tr) {
      tr = h("tr", { "data-task": t.taskId, onclick: () => { state.selectedTask = key; schedule(); } });
      taskRows.set(key, tr);
    }
    tr.className = "clickable" + (key === state.selectedTask ? " selected" : "");
    tr.replaceChildren(
      h("td", {}, t.taskId.slice(0, 8)), h("td", {}, pill(t.lastStatus, statusKind(t.lastStatus))),
      h("td", {}, t.taskDefinition), h("td", { class: "muted" }, t.group || ""), h("td", {}, t.node || ""),
      h("td", { title: t.createdAt }, when(t.createdAt)));
    return tr;
  });
  for (const key of taskRows.keys()) if (!keep.has(key)) taskRows.delete(key);
  taskTableEl.replaceChildren(taskTableEl.firstChild, ...rows);
  return taskTableEl;
}

function tasksView() {
  const all = [...state.tasks.values()];
  const services = [...new Set(all.map((t) => t.group).filter((g) => g && g.startsWith("service:")).map((g) => g.slice(8)))].sort();
  const nodes = [...new Set(all.map((t) => t.node).filter(Boolean))].sort();
  const shown = all.filter(taskMatches).sort((a, b) => (b.createdAt || "").localeCompare(a.createdAt || ""));
  const limit = 300;
  const selected = state.selectedTask && state.tasks.get(state.selectedTask);
  if (!selected) {
    if (detail.key) closeDetail();
  } else {
    if (detail.key !== state.selectedTask) openDetail(state.selectedTask, selected);
    detail.facts.replaceChildren(...taskFacts(selected).filter(Boolean));
  }
  return h("section", {},
    h("div", { class: "toolbar" },
      filterSelect("service", [["", "every service"], ...services.map((s) => [s, s])]),
      filterSelect("status", [["live", "not stopped"], ["all", "every status"], ...["PENDING", "ACTIVATING", "RUNNING", "STOPPING", "STOPPED"].map((s) => [s, s])]),
      filterSelect("node", [["", "every node"], ...nodes.map((n) => [n, n])]),
      labelFilter(),
      h("span", { class: "muted" }, `${shown.length} of ${all.length} tasks`, shown.length > limit ? ` (the newest ${limit} shown)` : "")),
    h("div", { class: "split" },
      taskTable(shown.slice(0, limit)),
      detail.root || h("p", { class: "muted" }, "select a task to see its containers, events and logs")));
}

// ---- Usage: the metering ledger ------------------------------------------------------------

const usage = { period: "1h", by: "service", data: null, error: "", loading: false, at: 0, el: null };

async function loadUsage() {
  usage.loading = true;
  try {
    const ns = encodeURIComponent(state.namespace || "");
    usage.data = await api(`usage?namespace=${ns}&period=${usage.period}&by=${usage.by}`);
    usage.error = "";
  } catch (err) {
    usage.error = err.message;
  }
  usage.loading = false;
  usage.at = Date.now();
  usage.el = null;
  schedule();
}

const HOUR_MS = 3600 * 1000;

function usageRows(data) {
  return (data.totals || []).map((t) => ({
    namespace: t.namespace,
    service: t.service || "(tasks run on their own)",
    tasks: t.tasks,
    vcpuHours: t.cpuUnitMs / 1024 / HOUR_MS,
    gbHours: t.memoryMibMs / 1024 / HOUR_MS,
    usedVcpuHours: t.usedCpuUnitMs / 1024 / HOUR_MS,
    avgMemoryMib: t.sampledMs ? t.usedMemoryMibMs / t.sampledMs : 0,
    peakMemoryMib: t.memoryPeakBytes / (1024 * 1024),
  }));
}

function exportCsv(rows) {
  const head = ["namespace", "service", "tasks", "vcpu_hours", "gb_hours", "used_vcpu_hours", "avg_memory_mib", "peak_memory_mib"];
  const quote = (v) => {
    const s = String(v);
    return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  };
  const lines = [head.join(",")].concat(rows.map((r) =>
    [r.namespace, r.service, r.tasks, r.vcpuHours.toFixed(6), r.gbHours.toFixed(6),
      r.usedVcpuHours.toFixed(6), r.avgMemoryMib.toFixed(1), r.peakMemoryMib.toFixed(1)].map(quote).join(",")));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const link = h("a", { href: URL.createObjectURL(blob), download: `berth-usage-${usage.period}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function usageChart(data) {
  const el = h("div", { class: "chart", id: "usage-chart" });
  const ends = data.ends || [];
  if (!ends.length || typeof uPlot === "undefined") return el;
  const step = ends.length > 1 ? ends[1] - ends[0] : 1;
  const xs = ends.map((t) => t / 1000);
  const palette = ["#2f6fde", "#2e9e5b", "#d99a1e", "#d1453b", "#7a4fd6", "#1c9aa6", "#8a6d3b"];
  const series = [{}];
  const ys = [];
  (data.series || []).forEach((s, i) => {
    series.push({ label: `${s.namespace}/${s.service || "-"}`, stroke: palette[i % palette.length], width: 2 });
    ys.push(s.cpuUnitMs.map((v) => v / 1024 / step));
  });
  // Made once the element is in the page, so that it knows its width.
  requestAnimationFrame(() => {
    const width = Math.max(el.clientWidth, 400);
    new uPlot({ width, height: 240, series, axes: [{}, { label: "vCPU reserved (average)" }] }, [xs, ...ys], el);
  });
  return el;
}

function usageView() {
  if (!usage.data && !usage.loading && !usage.error) loadUsage();
  else if (usage.at && Date.now() - usage.at > 30000 && !usage.loading) loadUsage();
  if (usage.el) return usage.el;
  const periodSelect = h("select", { "aria-label": "period", onchange: (e) => { usage.period = e.target.value; loadUsage(); } },
    ["1h", "6h", "24h", "7d"].map((p) => h("option", { value: p, selected: usage.period === p }, "last " + p)));
  const bySelect = h("select", { "aria-label": "by", onchange: (e) => { usage.by = e.target.value; loadUsage(); } },
    [["service", "by service"], ["namespace", "by namespace"]].map(([v, t]) => h("option", { value: v, selected: usage.by === v }, t)));
  const rows = usage.data ? usageRows(usage.data) : [];
  const fmt = (v, d) => v.toFixed(d);
  const el = h("section", { id: "usage" },
    h("div", { class: "toolbar" }, periodSelect, bySelect,
      h("button", { type: "button", onclick: loadUsage }, "Refresh"),
      h("button", { type: "button", id: "export-csv", disabled: !rows.length, onclick: () => exportCsv(rows) }, "Export CSV"),
      usage.error ? h("span", { class: "error" }, usage.error) : null,
      usage.loading ? h("span", { class: "muted" }, "loading…") : null),
    usage.data ? usageChart(usage.data) : null,
    h("table", { id: "usage-table" },
      h("tr", {}, ["namespace", "service", "tasks", "vCPU-hours", "GB-hours", "used vCPU-hours", "avg memory (MiB)", "peak memory (MiB)"].map((c) => h("th", {}, c))),
      rows.map((r) => h("tr", {}, h("td", {}, r.namespace), h("td", {}, r.service), h("td", {}, r.tasks),
        h("td", {}, fmt(r.vcpuHours, 4)), h("td", {}, fmt(r.gbHours, 4)), h("td", {}, fmt(r.usedVcpuHours, 4)),
        h("td", {}, fmt(r.avgMemoryMib, 1)), h("td", {}, fmt(r.peakMemoryMib, 1))))),
    usage.data ? h("p", { class: "muted" }, `from ${new Date(usage.data.from).toISOString()} to ${new Date(usage.data.to).toISOString()}`) : null);
  if (usage.data) usage.el = el;
  return el;
}

