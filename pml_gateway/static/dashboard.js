// pml-gateway dashboard: a snapshot from GET /graph, then every learning step from
// GET /events/stream (EventSource), resumed from the snapshot's last_event_id.
//
// Consistency rules:
// - graph events are applied once, in id order: an id at or below the last applied one is a
//   replayed duplicate and is skipped;
// - the browser's EventSource reconnects by itself and sends Last-Event-ID; when we re-create the
//   stream ourselves (after a failure, a reload, a silent connection) we pass ?last_event_id=;
// - `reset` means the server cannot replay from our id: reload the snapshot and start over from it.

import { GraphView, NO_COMMUNITY } from "./graph-view.js";

const GRAPH_TYPES = ["graph_synced", "edge_created", "edge_updated", "workflow_executed", "metrics_updated"];
const CONNECTION_TYPES = ["connected", "heartbeat", "reset"];
// "client" entries are this page's own notes (snapshot loaded, connection lost...).
const LOG_TYPES = [...GRAPH_TYPES, ...CONNECTION_TYPES, "client"];
const TYPE_COLORS = {
  graph_synced: "#a78bfa", edge_created: "#4ade80", edge_updated: "#fbbf24", workflow_executed: "#60a5fa",
  metrics_updated: "#22d3ee", connected: "#94a3b8", heartbeat: "#64748b", reset: "#f87171", client: "#cbd5e1",
};
const LOG_LIMIT = 500;
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 15000;
const ATTRIBUTE_REFRESH_MIN_MS = 1500;
const ATTRIBUTE_REFRESH_MAX_NODES = 5000;

const $ = (id) => document.getElementById(id);

const state = {
  connection: "connecting",
  lastEventId: null,
  snapshotLoaded: false,
  heartbeatAt: null,
  heartbeatGap: null,
  lastMessageAt: null,
  clients: null,
  uptime: null,
  metrics: null,
  metricsAt: null,
  metricsEventId: null,
  lastAutoReload: -Infinity,
  stats: { snapshots: 0, resets: 0, connects: 0, streamsOpened: 0, duplicates: 0, applied: 0, attributeRefreshes: 0 },
  counts: Object.fromEntries(LOG_TYPES.map((t) => [t, 0])),
};

const view = new GraphView($("graph"), { onHover: showTooltip, onFocus: () => {} });

// ---- the stream ----------------------------------------------------------------------------

let source = null;
let retryTimer = 0;
let retryDelay = RETRY_MIN_MS;
let loading = null;

function openStream(fromId) {
  closeStream();
  const url = new URL("events/stream", document.baseURI);
  if (fromId != null) url.searchParams.set("last_event_id", String(fromId));
  const es = new EventSource(url);
  source = es;
  state.stats.streamsOpened += 1;
  for (const type of [...GRAPH_TYPES, ...CONNECTION_TYPES]) {
    es.addEventListener(type, (ev) => { if (source === es) onMessage(type, ev); });
  }
  es.onerror = () => {
    if (source !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (an HTTP error such as 503): we retry ourselves, with backoff.
      source = null;
      if (state.connection !== "disconnected") note("stream closed; retrying with backoff");
      setConnection("disconnected");
      scheduleRetry();
    } else {
      // The browser retries by itself and resumes with Last-Event-ID.
      if (state.connection === "live") note("connection lost; reconnecting");
      setConnection("reconnecting");
    }
  };
}

function closeStream() {
  if (source) source.close();
  source = null;
  clearTimeout(retryTimer);
  retryTimer = 0;
}

function scheduleRetry() {
  clearTimeout(retryTimer);
  const delay = retryDelay;
  retryDelay = Math.min(RETRY_MAX_MS, retryDelay * 2);
  $("conn").title = `Event stream closed; next attempt in ${Math.round(delay / 1000)} s`;
  retryTimer = setTimeout(() => {
    retryTimer = 0;
    if (!state.snapshotLoaded) loadSnapshot("retry");
    else openStream(state.lastEventId);
  }, delay);
}

function onMessage(type, ev) {
  state.lastMessageAt = performance.now();
  let data;
  try {
    data = JSON.parse(ev.data);
  } catch {
    note(`unreadable ${type} event ignored`);
    return;
  }
  if (GRAPH_TYPES.includes(type)) {
    const id = ev.lastEventId ? Number(ev.lastEventId) : null;
    if (id != null && state.lastEventId != null && id <= state.lastEventId) {
      state.stats.duplicates += 1;
      return;
    }
    if (type === "metrics_updated") state.metricsEventId = id;
    applyGraphEvent(type, data);
    if (id != null) state.lastEventId = id;
    state.stats.applied += 1;
    renderLastEventId();
    addLog(type, id, data);
    return;
  }
  addLog(type, null, data);
  if (type === "connected") {
    state.stats.connects += 1;
    state.clients = data.connected_clients;
    // Heartbeat age and uptime describe this connection (perhaps another server process).
    state.heartbeatAt = null;
    state.uptime = null;
    retryDelay = RETRY_MIN_MS;
    $("conn").title = `Connected as ${data.client_id}`;
    setConnection("live");
    loadUptime();
  } else if (type === "heartbeat") {
    const now = performance.now();
    if (state.heartbeatAt != null) state.heartbeatGap = now - state.heartbeatAt;
    state.heartbeatAt = now;
    state.clients = data.connected_clients;
    state.uptime = { seconds: data.uptime_seconds, at: now };
    setConnection("live");
  } else if (type === "reset") {
    onReset(data);
  }
  renderClock();
}

function onReset(data) {
  state.stats.resets += 1;
  const why = `The event stream could not replay from #${data.requested_event_id ?? "–"} (${data.reason}).`;
  const now = performance.now();
  if (now - state.lastAutoReload < 5000) {
    // A second reset right after a reload: do not loop, let the user decide.
    state.lastEventId = null;
    showBanner("stale", `${why} The view may be stale.`);
    return;
  }
  state.lastAutoReload = now;
  showBanner("stale", `${why} Reloading the graph…`);
  loadSnapshot("reset").then((ok) => {
    if (ok) showBanner("info", `${why} The graph was reloaded from a fresh snapshot at #${state.lastEventId ?? 0}.`);
  });
}

// Heartbeats carry the uptime, but the first may be heartbeat_seconds (30 by default) away.
async function loadUptime() {
  try {
    const response = await fetch(new URL("events/stats", document.baseURI), { cache: "no-store" });
    if (!response.ok) return;
    const stats = await response.json();
    if (state.uptime == null) state.uptime = { seconds: stats.uptime_seconds, at: performance.now() };
    renderClock();
  } catch {
    // Only cosmetic: the next heartbeat brings it.
  }
}

// ---- the snapshot --------------------------------------------------------------------------

async function fetchGraph() {
  const response = await fetch(new URL("graph", document.baseURI), { cache: "no-store", headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`GET /graph answered ${response.status}`);
  return response.json();
}

/** Load GET /graph and follow the stream from its last_event_id. Resolves to true on success. */
function loadSnapshot(reason) {
  if (loading) return loading;
  closeStream();
  if (state.snapshotLoaded) setConnection("reconnecting");
  loading = (async () => {
    try {
      const snapshot = await fetchGraph();
      view.setGraph(snapshot.nodes, snapshot.edges);
      state.lastEventId = snapshot.last_event_id;
      state.snapshotLoaded = true;
      state.stats.snapshots += 1;
      if (snapshot.metrics) {
        state.metrics = snapshot.metrics;
        state.metricsAt = Date.parse(snapshot.metrics.computed_at) || Date.now();
        state.metricsEventId = snapshot.last_event_id;
      }
      note(`snapshot at #${snapshot.last_event_id ?? 0}: ${snapshot.nodes.length} tools, ${snapshot.edges.length} edges` +
        (reason === "initial" ? "" : ` (${reason})`));
      renderGraphChrome();
      renderMetrics();
      renderLastEventId();
      // No id yet (an empty log): live events only; the server would answer "after 0" with a reset.
      openStream(snapshot.last_event_id);
      return true;
    } catch (err) {
      note(`could not load the graph: ${err.message}`);
      showBanner("stale", `Could not load the graph (${err.message}). The view may be stale.`);
      setConnection("disconnected");
      scheduleRetry();
      return false;
    } finally {
      loading = null;
    }
  })();
  return loading;
}

// PageRank of every node and the communities only come with the snapshot: after a metrics
// recompute, fetch it again (throttled) and take those attributes, leaving the layout alone.
let attributeTimer = 0;
let attributeBusy = false;
let attributeLast = -Infinity;

function scheduleAttributeRefresh() {
  if (attributeTimer || view.nodeCount > ATTRIBUTE_REFRESH_MAX_NODES) return;
  const wait = Math.max(0, attributeLast + ATTRIBUTE_REFRESH_MIN_MS - performance.now()) + 100;
  attributeTimer = setTimeout(refreshAttributes, wait);
}

async function refreshAttributes() {
  attributeTimer = 0;
  if (attributeBusy || loading || state.connection !== "live") return;
  attributeBusy = true;
  attributeLast = performance.now();
  try {
    const snapshot = await fetchGraph();
    if (loading) return;
    view.mergeAttributes(snapshot.nodes);
    for (const e of snapshot.edges) {
      const edge = view.edge(e.from_tool_id, e.to_tool_id);
      if (edge) {
        edge.success_count = e.success_count;
        edge.failure_count = e.failure_count;
        edge.last_observed = e.last_observed;
      }
    }
    state.stats.attributeRefreshes += 1;
    renderGraphChrome();
    renderPagerank();
  } catch {
    // The next metrics_updated tries again.
  } finally {
    attributeBusy = false;
  }
}

// ---- applying events -----------------------------------------------------------------------

function applyGraphEvent(type, d) {
  if (type === "edge_created") {
    view.upsertEdge(d.from_tool_id, d.to_tool_id,
      { confidence: d.confidence_score, observed_count: d.observed_count, edge_type: d.edge_type, last_observed: d.timestamp }, "created");
  } else if (type === "edge_updated") {
    view.upsertEdge(d.from_tool_id, d.to_tool_id,
      { confidence: d.new_confidence, observed_count: d.observed_count, edge_type: d.edge_type, last_observed: d.timestamp }, "updated");
  } else if (type === "workflow_executed") {
    view.ensureNodes(d.tool_ids);
    view.flashNodes(d.tool_ids, d.success);
  } else if (type === "metrics_updated") {
    state.metrics = d;
    state.metricsAt = Date.parse(d.timestamp) || Date.now();
    for (const entry of d.pagerank_top_10) view.setPagerank(entry.tool_id, entry.score);
    view.refreshSizes();
    renderMetrics();
    scheduleAttributeRefresh();
  } else if (type === "graph_synced") {
    // The server (re)loaded its graph: at this point of the log our view must hold the same.
    if (d.node_count !== view.nodeCount || d.edge_count !== view.edgeCount) {
      const text = `The server re-synced with ${d.node_count} tools and ${d.edge_count} edges; this view had ` +
        `${view.nodeCount} and ${view.edgeCount}.`;
      showBanner("stale", `${text} Reloading the graph…`);
      queueMicrotask(() => loadSnapshot("resync").then((ok) => {
        if (ok) showBanner("info", `${text} The graph was reloaded from a fresh snapshot.`);
      }));
    }
  }
  renderGraphChrome();
}

// ---- rendering -----------------------------------------------------------------------------

function setConnection(value) {
  state.connection = value;
  const pill = $("conn");
  pill.dataset.state = value;
  $("conn-label").textContent = value;
  document.body.dataset.connection = value;
}

function renderLastEventId() {
  const el = $("last-event-id");
  el.textContent = state.lastEventId == null ? "—" : `#${state.lastEventId}`;
  el.dataset.value = state.lastEventId == null ? "" : String(state.lastEventId);
}

function formatDuration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  if (seconds < 60) return `${seconds}s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${String(seconds % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function formatDensity(value) {
  if (value == null) return "—";
  if (value === 0) return "0";
  return value >= 0.001 ? value.toFixed(4) : value.toExponential(2);
}

function renderClock() {
  const now = performance.now();
  const age = $("heartbeat-age");
  if (state.heartbeatAt == null) {
    age.textContent = "none yet";
    age.dataset.seconds = "";
  } else {
    const seconds = (now - state.heartbeatAt) / 1000;
    age.textContent = `${formatDuration(seconds)} ago`;
    age.dataset.seconds = seconds.toFixed(1);
    // Late: more than twice the usual gap without one.
    age.classList.toggle("late", state.heartbeatGap != null && now - state.heartbeatAt > 2 * state.heartbeatGap + 1000);
  }
  $("clients").textContent = state.clients == null ? "—" : String(state.clients);
  $("uptime").textContent = state.uptime == null || state.connection !== "live"
    ? "—" : formatDuration(state.uptime.seconds + (now - state.uptime.at) / 1000);
  if (state.metricsAt != null) {
    const ago = formatDuration((Date.now() - state.metricsAt) / 1000);
    $("metrics-age").textContent = `metrics computed ${ago} ago` +
      (state.metricsEventId != null ? ` · event #${state.metricsEventId}` : "");
  }
}

function setCard(name, text, value) {
  const card = document.querySelector(`.card[data-metric="${name}"]`);
  const el = card.querySelector(".value");
  if (el.textContent === text) return;
  el.textContent = text;
  card.dataset.value = value == null ? "" : String(value);
  card.classList.remove("changed");
  void card.offsetWidth; // restart the highlight animation
  card.classList.add("changed");
}

function renderMetrics() {
  const m = state.metrics;
  setCard("tools", m ? m.node_count.toLocaleString("en-US") : "—", m?.node_count);
  setCard("edges", m ? m.edge_count.toLocaleString("en-US") : "—", m?.edge_count);
  setCard("density", m ? formatDensity(m.density) : "—", m?.density);
  setCard("communities", m ? m.communities_count.toLocaleString("en-US") : "—", m?.communities_count);
  renderPagerank();
  renderClock();
}

function renderPagerank() {
  const list = $("pagerank");
  list.replaceChildren();
  const top = state.metrics?.pagerank_top_10 ?? [];
  if (top.length === 0) {
    const li = document.createElement("li");
    li.append(span("none", "PageRank appears once metrics are computed."));
    li.style.display = "block";
    list.append(li);
    return;
  }
  const max = Math.max(...top.map((e) => e.score)) || 1;
  top.forEach((entry, index) => {
    const li = document.createElement("li");
    li.dataset.tool = entry.tool_id;
    const tool = span("tool", "");
    const cut = entry.tool_id.indexOf("__");
    if (cut > 0) tool.append(span("srv", entry.tool_id.slice(0, cut + 2)), entry.tool_id.slice(cut + 2));
    else tool.textContent = entry.tool_id;
    tool.title = entry.tool_id;
    const bar = span("bar", "");
    const fill = document.createElement("i");
    fill.style.width = `${Math.max(3, (entry.score / max) * 100)}%`;
    const node = view.nodes.get(entry.tool_id);
    if (node) fill.style.background = view.colorOf(node);
    bar.append(fill);
    li.append(span("rank", String(index + 1)), tool, bar, span("score", entry.score.toFixed(3)));
    li.addEventListener("mouseenter", () => view.setFocus(entry.tool_id));
    li.addEventListener("mouseleave", () => view.setFocus(null));
    list.append(li);
  });
}

function renderGraphChrome() {
  const canvas = $("graph");
  canvas.dataset.nodes = String(view.nodeCount);
  canvas.dataset.edges = String(view.edgeCount);
  $("graph-counts").textContent = `${view.nodeCount.toLocaleString("en-US")} tools · ${view.edgeCount.toLocaleString("en-US")} edges`;
  $("empty").hidden = view.nodeCount > 0;

  let dependency = 0;
  for (const e of view.edges.values()) if (e.edge_type === "dependency") dependency += 1;
  const servers = new Set([...view.nodes.values()].map((n) => n.server).filter(Boolean));
  $("m-tools-foot").textContent = `${servers.size} server${servers.size === 1 ? "" : "s"}`;
  $("m-edges-foot").textContent = `${dependency} dep · ${view.edgeCount - dependency} seq`;
  renderLegend();
}

function renderLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  if (view.nodeCount === 0) {
    view.setInsets({ bottom: 0 });
    return;
  }
  const communities = view.communities();
  const colours = span("item", "");
  colours.title = "Node colour: community (Louvain); the number is its size";
  colours.append("communities");
  for (const c of communities.slice(0, 10)) {
    const sw = span("sw", "");
    sw.style.background = c.color;
    colours.append(sw, span("n", String(c.size)));
  }
  if (communities.length > 10) colours.append(span("n", `+${communities.length - 10}`));
  if (communities.length === 0) {
    const sw = span("sw", "");
    sw.style.background = NO_COMMUNITY;
    colours.append(sw, "not computed yet");
  }
  const size = span("item", "size: PageRank");
  const dep = span("item", "");
  dep.append(span("ln", ""), "dependency");
  const seq = span("item", "");
  seq.append(span("ln dashed", ""), "sequence");
  const conf = span("item", "");
  conf.title = "Edge colour and width: confidence (log scale)";
  conf.append("confidence", span("grad", ""));
  legend.append(colours, span("sep", ""), size, span("sep", ""), dep, seq, conf);
  view.setInsets({ bottom: legend.offsetHeight + 10 });
}

function span(cls, text) {
  const el = document.createElement("span");
  if (cls) el.className = cls;
  if (text) el.textContent = text;
  return el;
}

// ---- banner --------------------------------------------------------------------------------

// "stale": the view may be behind the server; "info": it was repaired, and this says why.
// Either stays until dismissed or until the button refetched the graph.
function showBanner(kind, text) {
  const banner = $("stale-banner");
  banner.dataset.kind = kind;
  $("stale-text").textContent = text;
  banner.hidden = false;
}

function hideBanner() {
  $("stale-banner").hidden = true;
}

$("refetch").addEventListener("click", async () => {
  showBanner("stale", "Reloading the graph…");
  if (await loadSnapshot("refetch")) hideBanner();
});
$("dismiss-banner").addEventListener("click", hideBanner);

// ---- tooltip -------------------------------------------------------------------------------

function row(label, value) {
  const div = document.createElement("div");
  div.className = "t-row";
  const b = document.createElement("b");
  b.textContent = value;
  div.append(label, b);
  return div;
}

function showTooltip(hover, x, y) {
  const tip = $("tooltip");
  if (!hover) {
    tip.hidden = true;
    return;
  }
  tip.replaceChildren();
  const title = document.createElement("div");
  title.className = "t-title";
  if (hover.kind === "node") {
    const n = hover.node;
    title.textContent = n.id;
    tip.append(title,
      row("server", n.server ?? "—"),
      row("PageRank", n.pagerank == null ? "—" : n.pagerank.toFixed(4)),
      row("community", n.community == null ? "—" : String(n.community)),
      row("edges out / in", `${n.out.size} / ${n.in.size}`));
    const next = [...n.out].sort((a, b) => b.confidence - a.confidence).slice(0, 5);
    if (next.length) {
      const sub = document.createElement("div");
      sub.className = "t-sub";
      sub.append("most confident next tools");
      for (const e of next) {
        const line = document.createElement("div");
        line.textContent = `→ ${e.target.id}  ${e.confidence.toFixed(2)}`;
        sub.append(line);
      }
      tip.append(sub);
    }
  } else {
    const e = hover.edge;
    title.textContent = `${e.source.id} → ${e.target.id}`;
    tip.append(title,
      row("confidence", e.confidence.toFixed(3)),
      row("type", e.edge_type),
      row("observed", String(e.observed_count)),
      row("successes / failures", e.success_count == null ? "—" : `${e.success_count} / ${e.failure_count}`));
    if (e.last_observed) tip.append(row("last observed", new Date(e.last_observed).toLocaleTimeString()));
  }
  tip.hidden = false;
  const wrap = $("canvas-wrap");
  const left = Math.min(x + 14, wrap.clientWidth - tip.offsetWidth - 8);
  const top = y + 14 + tip.offsetHeight > wrap.clientHeight - 8 ? y - tip.offsetHeight - 10 : y + 14;
  tip.style.left = `${Math.max(8, left)}px`;
  tip.style.top = `${Math.max(8, top)}px`;
}

// ---- event log -----------------------------------------------------------------------------

const logEntries = [];
const shown = new Set(LOG_TYPES.filter((t) => t !== "heartbeat"));
const chipCounts = {};

function summarize(type, d) {
  const dim = (text) => ["dim", text];
  const plain = (text) => ["", text];
  switch (type) {
    case "edge_created":
      return [plain(d.from_tool_id), dim(" → "), plain(d.to_tool_id), dim("  conf "), plain(d.confidence_score.toFixed(2)),
        dim(` · ${d.edge_type} · n=${d.observed_count}`)];
    case "edge_updated":
      return [plain(d.from_tool_id), dim(" → "), plain(d.to_tool_id), dim("  conf "),
        plain(`${d.old_confidence.toFixed(2)}→${d.new_confidence.toFixed(2)}`), dim(` · n=${d.observed_count}`)];
    case "workflow_executed":
      return [plain(d.workflow_id), d.success ? ["good", " ✓ "] : ["bad", " ✗ "],
        dim(`${d.tool_ids.length} tool${d.tool_ids.length === 1 ? "" : "s"} · ${Math.round(d.execution_time_ms)} ms · `),
        dim(d.tool_ids.join(", "))];
    case "metrics_updated":
      return [plain(`${d.node_count} tools · ${d.edge_count} edges`), dim(` · density ${formatDensity(d.density)} · `),
        plain(`${d.communities_count} communities`)];
    case "graph_synced":
      return [plain(`${d.node_count} tools · ${d.edge_count} edges`), dim(` loaded in ${d.sync_duration_ms.toFixed(1)} ms`)];
    case "heartbeat":
      return [plain(`${d.connected_clients} client${d.connected_clients === 1 ? "" : "s"}`), dim(` · up ${formatDuration(d.uptime_seconds)}`)];
    case "connected":
      return [plain(d.client_id), dim(` · ${d.connected_clients} client${d.connected_clients === 1 ? "" : "s"} · server at #${d.last_event_id ?? 0}`)];
    case "reset":
      return [["bad", d.reason], dim(` · requested #${d.requested_event_id ?? "–"} · oldest #${d.oldest_event_id ?? "–"}`)];
    default:
      return [plain(String(d.text ?? ""))];
  }
}

function note(text) {
  addLog("client", null, { text });
}

function addLog(type, id, data) {
  const entry = { type, id, at: data.timestamp ? new Date(data.timestamp) : new Date(), parts: summarize(type, data), el: null };
  logEntries.push(entry);
  if (logEntries.length > LOG_LIMIT) {
    const old = logEntries.shift();
    if (old.el) old.el.remove();
  }
  state.counts[type] += 1;
  if (chipCounts[type]) chipCounts[type].textContent = String(state.counts[type]);
  if (shown.has(type)) {
    const list = $("log");
    list.querySelector(".empty-row")?.remove();
    list.prepend(logRow(entry, true));
  }
  renderLogCount();
}

function logRow(entry, fresh) {
  const li = document.createElement("li");
  li.dataset.type = entry.type;
  if (entry.id != null) li.dataset.id = String(entry.id);
  if (fresh) li.className = "fresh";
  li.style.setProperty("--c", TYPE_COLORS[entry.type]);
  const body = span("body", "");
  const text = span("text", "");
  for (const [cls, part] of entry.parts) text.append(cls ? span(cls, part) : part);
  body.append(span("type", entry.type), text);
  li.append(span("time", entry.at.toLocaleTimeString("en-GB", { hour12: false })),
    span("id", entry.id == null ? "" : `#${entry.id}`), body);
  entry.el = li;
  return li;
}

function renderLog() {
  const list = $("log");
  list.replaceChildren();
  for (const entry of logEntries) entry.el = null;
  const visible = logEntries.filter((e) => shown.has(e.type)).reverse();
  for (const entry of visible) list.append(logRow(entry, false));
  if (visible.length === 0) list.append(span("empty-row", "No events of the selected types yet."));
  renderLogCount();
}

function renderLogCount() {
  const total = logEntries.length;
  const visible = logEntries.reduce((n, e) => n + (shown.has(e.type) ? 1 : 0), 0);
  $("log-count").textContent = visible === total ? `${total}` : `${visible} of ${total}`;
}

function buildFilters() {
  const box = $("filters");
  for (const type of LOG_TYPES) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.dataset.type = type;
    chip.style.setProperty("--c", TYPE_COLORS[type]);
    chip.setAttribute("aria-pressed", String(shown.has(type)));
    chip.title = `Show ${type} events`;
    const count = span("n", "0");
    chipCounts[type] = count;
    chip.append(document.createElement("i"), type, count);
    chip.addEventListener("click", () => {
      if (shown.has(type)) shown.delete(type);
      else shown.add(type);
      chip.setAttribute("aria-pressed", String(shown.has(type)));
      renderLog();
    });
    box.append(chip);
  }
}

// ---- controls, clock, watchdog -------------------------------------------------------------

$("fit").addEventListener("click", () => view.fit());
$("toggle-labels").addEventListener("click", (ev) => {
  const on = ev.currentTarget.getAttribute("aria-pressed") !== "true";
  ev.currentTarget.setAttribute("aria-pressed", String(on));
  view.setShowAllLabels(on);
});
$("toggle-layout").addEventListener("click", (ev) => {
  const on = ev.currentTarget.getAttribute("aria-pressed") !== "true";
  ev.currentTarget.setAttribute("aria-pressed", String(on));
  view.setFrozen(on);
});

setInterval(() => {
  renderClock();
  // A connection that went silent (a sleeping laptop, a dead proxy) never errors by itself:
  // past three heartbeat gaps without a single frame, re-create it.
  if (state.connection === "live" && source && state.heartbeatGap != null && state.lastMessageAt != null) {
    const silent = performance.now() - state.lastMessageAt;
    if (silent > Math.max(3 * state.heartbeatGap, 10000)) {
      note(`no frame for ${Math.round(silent / 1000)} s; reconnecting`);
      setConnection("reconnecting");
      state.lastMessageAt = performance.now();
      openStream(state.lastEventId);
    }
  }
}, 1000);

// For tests and for poking at from the devtools console.
window.__pmlDashboard = {
  get connection() { return state.connection; },
  get lastEventId() { return state.lastEventId; },
  get nodeCount() { return view.nodeCount; },
  get edgeCount() { return view.edgeCount; },
  get metrics() { return state.metrics; },
  get stats() { return { ...state.stats }; },
  get counts() { return { ...state.counts }; },
  summary() {
    return {
      connection: state.connection, lastEventId: state.lastEventId, nodeCount: view.nodeCount, edgeCount: view.edgeCount,
      metrics: state.metrics, stats: { ...state.stats }, counts: { ...state.counts },
      bannerVisible: !$("stale-banner").hidden, bannerKind: $("stale-banner").dataset.kind,
      nodesWithoutCommunity: [...view.nodes.values()].filter((n) => n.community == null).length,
    };
  },
  edge(from, to) {
    const e = view.edge(from, to);
    return e && {
      confidence: e.confidence, observed_count: e.observed_count, edge_type: e.edge_type,
      highlight: e.flashKind, highlighted: e.flashUntil > performance.now(),
    };
  },
  node(id) {
    const n = view.nodes.get(id);
    return n && { id: n.id, server: n.server, pagerank: n.pagerank, community: n.community, color: view.colorOf(n), x: n.x, y: n.y, r: n.r };
  },
  /** Where a tool is drawn, in page coordinates (for pointing at it). */
  screenPosition(id) {
    const n = view.nodes.get(id);
    if (!n) return null;
    const rect = $("graph").getBoundingClientRect();
    return { x: rect.left + view.view.x + n.x * view.view.k, y: rect.top + view.view.y + n.y * view.view.k };
  },
  refetch: () => loadSnapshot("refetch"),
  view,
};

buildFilters();
renderLog();
renderMetrics();
renderGraphChrome();
setConnection("connecting");
loadSnapshot("initial");
