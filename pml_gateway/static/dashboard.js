// pml-gateway dashboard: a snapshot from GET /graph, then every learning step from
// GET /events/stream (EventSource), resumed from the snapshot's last_event_id. Around the learned
// graph, the whole gateway: every exposed tool (GET /tools; never-called ones grey), the
// downstream servers and their state (GET /health, polled, and tool_added / tool_removed events),
// running workflows (workflow_progress), the suggestion hit rates when the metrics carry them.
//
// Authentication: when GET /graph answers 401 the page asks for an API key, keeps it in
// sessionStorage, sends it as `Authorization: Bearer` on every fetch, and opens the stream with a
// short-lived token from POST /events/token (`?access_token=`: EventSource cannot send headers).
// A server without authentication never answers 401: then none of this happens.
//
// Consistency rules:
// - graph events are applied once, in id order: an id at or below the last applied one is a
//   replayed duplicate and is skipped;
// - the browser's EventSource reconnects by itself and sends Last-Event-ID; when we re-create the
//   stream ourselves (after a failure, a reload, a silent connection) we pass ?last_event_id=;
// - `reset` means the server cannot replay from our id: reload the snapshot and start over from it.

import { GraphView, NO_COMMUNITY } from "./graph-view.js";

// Graph events carry an id; workflow_progress is live only (no id).
const GRAPH_TYPES = ["graph_synced", "edge_created", "edge_updated", "workflow_executed", "metrics_updated",
  "tool_added", "tool_removed", "tool_forgotten", "graph_reset"];
const LIVE_TYPES = ["workflow_progress"];
const CONNECTION_TYPES = ["connected", "heartbeat", "reset"];
const STREAM_TYPES = [...GRAPH_TYPES, ...LIVE_TYPES, ...CONNECTION_TYPES];
// "client" entries are this page's own notes (snapshot loaded, connection lost...).
const LOG_TYPES = [...STREAM_TYPES, "client"];
const TYPE_COLORS = {
  graph_synced: "#a78bfa", edge_created: "#4ade80", edge_updated: "#fbbf24", workflow_executed: "#60a5fa",
  metrics_updated: "#22d3ee", tool_added: "#a3e635", tool_removed: "#fb923c", workflow_progress: "#818cf8",
  tool_forgotten: "#f472b6", graph_reset: "#f43f5e",
  connected: "#94a3b8", heartbeat: "#64748b", reset: "#f87171", client: "#cbd5e1",
};
const LOG_LIMIT = 500;
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 15000;
const ATTRIBUTE_REFRESH_MIN_MS = 1500;
const ATTRIBUTE_REFRESH_MAX_NODES = 5000;
const POLL_MS = 3000;             // GET /health, /tools, /events/stats
const POLL_SOON_MS = 150;         // after a tool_added / tool_removed: the server's state changed
const WORKFLOWS_KEPT = 6;         // finished workflows still listed
const SERVER_HISTORY = 20;        // state changes remembered per server
const KEY_STORAGE = "pml-gateway.api-key";

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
  stats: { snapshots: 0, resets: 0, connects: 0, streamsOpened: 0, duplicates: 0, applied: 0, attributeRefreshes: 0,
    polls: 0, tokens: 0, authPrompts: 0 },
  counts: Object.fromEntries(LOG_TYPES.map((t) => [t, 0])),
  received: 0,               // graph and workflow events since page load (not connection events)
  serverStats: null,         // the last GET /events/stats
  // tool id -> {server, title, description, available}; known once GET /tools answered.
  catalog: new Map(),
  catalogKnown: false,
  // server name -> {state, tools, error, restarts, transport, history: [state...]}
  servers: new Map(),
  // workflow id -> {id, total, completed, failed, skipped, tasks: Map(task id -> {tool_id, status}), status, at}
  workflows: new Map(),
};

// ---- authentication --------------------------------------------------------------------------

const auth = { key: sessionStorage.getItem(KEY_STORAGE), required: false, waiting: null };

class AuthNeeded extends Error {}

/** fetch() relative to the page, with the API key when there is one; AuthNeeded on 401. */
async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  headers.set("Accept", "application/json");
  if (auth.key) headers.set("Authorization", `Bearer ${auth.key}`);
  const response = await fetch(new URL(path, document.baseURI), { cache: "no-store", ...init, headers });
  if (response.status === 401) throw new AuthNeeded(`${path} needs an API key`);
  return response;
}

/** Ask for a key (a refused one is forgotten first); resolves once one was entered. */
function askForKey(refused) {
  auth.required = true;
  if (refused && auth.key) forgetKey();
  if (auth.waiting) return auth.waiting;
  state.stats.authPrompts += 1;
  $("auth-text").textContent = refused
    ? "The gateway refused that key. Enter an API key with the events:read scope."
    : "This gateway requires an API key with the events:read scope.";
  $("auth-text").className = refused ? "error" : "";
  $("auth").hidden = false;
  $("auth-key").value = "";
  $("auth-key").focus();
  setConnection("disconnected");
  auth.waiting = new Promise((resolve) => { auth.resolve = resolve; });
  return auth.waiting;
}

$("auth-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("auth-key").value.trim();
  if (!key) return;
  auth.key = key;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("auth").hidden = true;
  $("auth-forget").hidden = false;
  const resolve = auth.resolve;
  auth.waiting = auth.resolve = null;
  resolve();
});

function forgetKey() {
  auth.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  $("auth-forget").hidden = true;
}

$("auth-forget").addEventListener("click", () => {
  forgetKey();
  closeStream();
  loadSnapshot("key forgotten");
});

/** The stream's URL: resume point, and a fresh stream token when a key is in use. */
async function streamUrl(fromId) {
  const url = new URL("events/stream", document.baseURI);
  if (fromId != null) url.searchParams.set("last_event_id", String(fromId));
  if (auth.key) {
    const response = await api("events/token", { method: "POST" });
    if (!response.ok) throw new Error(`POST /events/token answered ${response.status}`);
    const { token } = await response.json();
    state.stats.tokens += 1;
    url.searchParams.set("access_token", token);
  }
  return url;
}

const view = new GraphView($("graph"), { onHover: showTooltip, onFocus: () => {} });

// ---- the stream ----------------------------------------------------------------------------

let source = null;
let retryTimer = 0;
let retryDelay = RETRY_MIN_MS;
let loading = null;

let streamGeneration = 0;

async function openStream(fromId) {
  closeStream();
  const generation = ++streamGeneration;
  let url;
  try {
    url = await streamUrl(fromId);
  } catch (err) {
    if (generation !== streamGeneration) return;
    if (err instanceof AuthNeeded) {
      await askForKey(true);
      if (generation === streamGeneration) openStream(state.lastEventId);
      return;
    }
    note(`could not open the stream: ${err.message}`);
    setConnection("disconnected");
    scheduleRetry();
    return;
  }
  if (generation !== streamGeneration) return; // superseded while the token was on its way
  const es = new EventSource(url);
  source = es;
  state.stats.streamsOpened += 1;
  for (const type of STREAM_TYPES) {
    es.addEventListener(type, (ev) => { if (source === es) onMessage(type, ev); });
  }
  es.onerror = () => {
    if (source !== es) return;
    // With a stream token, the browser's own retry would reuse an expired token: we reconnect
    // ourselves with a fresh one (and the resume point).
    const gaveUp = es.readyState === EventSource.CLOSED;
    if (gaveUp || auth.key) {
      // The browser gave up (an HTTP error such as 503), or would retry with a stale token: we
      // retry ourselves, with backoff.
      es.close();
      source = null;
      if (gaveUp && state.connection !== "disconnected") note("stream closed; retrying with backoff");
      if (!gaveUp && state.connection === "live") note("connection lost; reconnecting");
      setConnection(gaveUp ? "disconnected" : "reconnecting");
      scheduleRetry();
    } else {
      // The browser retries by itself and resumes with Last-Event-ID.
      if (state.connection === "live") note("connection lost; reconnecting");
      setConnection("reconnecting");
    }
  };
}

function closeStream() {
  streamGeneration += 1;
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
    state.received += 1;
    applyGraphEvent(type, data);
    if (id != null) state.lastEventId = id;
    state.stats.applied += 1;
    renderLastEventId();
    addLog(type, id, data);
    return;
  }
  addLog(type, null, data);
  if (type === "workflow_progress") {
    state.received += 1;
    applyProgress(data);
    return;
  }
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
    const response = await api("events/stats");
    if (!response.ok) return;
    const stats = await response.json();
    state.serverStats = stats;
    if (state.uptime == null) state.uptime = { seconds: stats.uptime_seconds, at: performance.now() };
    renderClock();
  } catch {
    // Only cosmetic: the next heartbeat brings it.
  }
}

// ---- the snapshot --------------------------------------------------------------------------

async function fetchGraph() {
  const response = await api("graph");
  if (!response.ok) throw new Error(`GET /graph answered ${response.status}`);
  return response.json();
}

/** Load GET /graph and follow the stream from its last_event_id. Resolves to true on success. */
function loadSnapshot(reason) {
  if (loading) return loading;
  closeStream();
  if (state.snapshotLoaded) setConnection("reconnecting");
  loading = (async () => {
    // Until it loads or fails for another reason than a missing or refused API key.
    for (;;) {
      try {
        const snapshot = await fetchGraph();
        view.setGraph(snapshot.nodes, snapshot.edges);
        applyCatalog();
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
        pollGateway();
        return true;
      } catch (err) {
        if (err instanceof AuthNeeded) {
          const refused = auth.key != null;
          note(refused ? "the API key was refused" : "the gateway requires an API key");
          await askForKey(refused);
          continue;
        }
        note(`could not load the graph: ${err.message}`);
        showBanner("stale", `Could not load the graph (${err.message}). The view may be stale.`);
        setConnection("disconnected");
        scheduleRetry();
        return false;
      }
    }
  })().finally(() => { loading = null; });
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
    // Fields the snapshot's metrics carry and the event did not (hit rates, perhaps): keep them.
    if (snapshot.metrics && state.metrics) {
      let added = false;
      for (const [key, value] of Object.entries(snapshot.metrics)) {
        if (!(key in state.metrics)) { state.metrics[key] = value; added = true; }
      }
      if (added) renderHitRate();
    }
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
    finishWorkflow(d.workflow_id, d.success);
  } else if (type === "tool_added" || type === "tool_removed") {
    applyToolEvent(type, d);
  } else if (type === "tool_forgotten") {
    // An administrator deleted its learned history: its edges go; an exposed tool stays, grey.
    view.forgetNode(d.tool_id);
    if (state.metrics) {  // until the metrics_updated that follows
      state.metrics = { ...state.metrics, pagerank_top_10: state.metrics.pagerank_top_10.filter((e) => e.tool_id !== d.tool_id) };
      renderPagerank();
    }
  } else if (type === "graph_reset") {
    view.forgetAll();
    state.metrics = null;  // the next metrics_updated (right after) fills the cards again
    renderMetrics();
  } else if (type === "metrics_updated") {
    // Fields only the snapshot carries (hit rates, perhaps) stay until a snapshot says otherwise.
    state.metrics = { ...(state.metrics ?? {}), ...d };
    state.metricsAt = Date.parse(d.timestamp) || Date.now();
    for (const entry of d.pagerank_top_10) view.setPagerank(entry.tool_id, entry.score);
    view.refreshSizes();
    renderMetrics();
    scheduleAttributeRefresh();
    scheduleChrome();
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
  scheduleChrome();
}

// ---- the whole gateway: tools, servers, workflows ----------------------------------------------

let pollTimer = 0;
let polling = null;

/** GET /health, /tools and /events/stats now, then every POLL_MS. */
function pollGateway() {
  clearTimeout(pollTimer);
  if (polling) return polling;
  polling = (async () => {
    try {
      const [health, tools, stats] = await Promise.all([
        api("health").then((r) => (r.ok ? r.json() : null)),
        api("tools").then((r) => (r.ok ? r.json() : null)),
        api("events/stats").then((r) => (r.ok ? r.json() : null)),
      ]);
      state.stats.polls += 1;
      if (stats) state.serverStats = stats;
      // Without a token /health may answer only its status: the servers are then unknown.
      if (health && health.downstreams) applyHealth(health.downstreams);
      if (tools && Array.isArray(tools.tools)) applyToolList(tools.tools);
      renderCounters();
      scheduleChrome();
    } catch (err) {
      if (err instanceof AuthNeeded) loadSnapshot("api key"); // asks for a key (once), then starts over
      // Otherwise the server is away: the stream's own state says so; try again later.
    } finally {
      polling = null;
      pollTimer = setTimeout(pollGateway, POLL_MS);
    }
  })();
  return polling;
}

let soonTimer = 0;
function pollSoon() {
  if (!soonTimer) soonTimer = setTimeout(() => { soonTimer = 0; pollGateway(); }, POLL_SOON_MS);
}

function setServerState(name, fields) {
  let server = state.servers.get(name);
  if (!server) state.servers.set(name, (server = { name, state: null, tools: 0, error: null, restarts: 0, history: [] }));
  const before = server.state;
  Object.assign(server, fields);
  if (server.state !== before) {
    server.history.push(server.state);
    if (server.history.length > SERVER_HISTORY) server.history.shift();
    if (before != null) note(`server ${name}: ${before} → ${server.state}${server.error ? ` (${server.error})` : ""}`);
  }
}

function applyHealth(downstreams) {
  for (const [name, h] of Object.entries(downstreams)) {
    setServerState(name, { state: h.state, tools: h.tools ?? 0, error: h.error ?? null, restarts: h.restarts ?? 0,
      transport: h.transport ?? null });
  }
  // A server removed from the config: gone, and so are its tools that never ran.
  for (const name of [...state.servers.keys()]) if (!(name in downstreams)) state.servers.delete(name);
  for (const [id, tool] of [...state.catalog]) if (!state.servers.has(tool.server)) state.catalog.delete(id);
  applyCatalog();
}

function applyToolList(tools) {
  const listed = new Set();
  for (const t of tools) {
    listed.add(t.tool_id);
    state.catalog.set(t.tool_id, { server: t.server, title: t.title ?? null, description: t.description ?? null, available: true });
  }
  // Tools that left the list but whose server is still configured: greyed out until they return.
  for (const [id, tool] of [...state.catalog]) {
    if (listed.has(id)) continue;
    if (state.servers.has(tool.server)) tool.available = false;
    else state.catalog.delete(id);
  }
  state.catalogKnown = true;
  applyCatalog();
}

function applyToolEvent(type, d) {
  const known = state.catalog.get(d.tool_id);
  state.catalog.set(d.tool_id, { ...(known ?? { title: null, description: null }), server: d.server, available: type === "tool_added" });
  if (!state.servers.has(d.server)) setServerState(d.server, { state: "connected" });
  if (type === "tool_added") setServerState(d.server, { state: "connected", error: null });
  else if (/disconnect|crash|fail|died|exit|closed/i.test(d.reason ?? "")) setServerState(d.server, { state: "failed" });
  state.catalogKnown = true;
  applyCatalog();
  pollSoon();
}

function applyCatalog() {
  const tools = [...state.catalog].map(([id, t]) => ({ id, server: t.server, available: t.available }));
  // A learned tool the list does not hold: gone from its server if that server is known.
  view.setCatalog(tools, (node) => (state.servers.has(node.server) ? false : null));
  scheduleChrome();
}

function applyProgress(d) {
  let wf = state.workflows.get(d.workflow_id);
  if (!wf) {
    wf = { id: d.workflow_id, total: d.total, completed: 0, failed: 0, skipped: 0, tasks: new Map(), status: "running", at: Date.now() };
    state.workflows.set(d.workflow_id, wf);
  }
  const task = wf.tasks.get(d.task_id) ?? { tool_id: d.tool_id, status: null };
  if (task.status === "started" && d.status !== "started") {
    view.setRunning(d.tool_id, false);
    view.flashNodes([d.tool_id], d.status !== "failed");
  }
  if (d.status === "started") {
    view.ensureNodes([d.tool_id]);
    view.setRunning(d.tool_id, true);
  }
  if (d.status === "failed") wf.failed += 1;
  if (d.status === "skipped") wf.skipped += 1;
  task.status = d.status;
  task.tool_id = d.tool_id;
  wf.tasks.set(d.task_id, task);
  wf.total = d.total;
  wf.completed = d.completed;
  if (wf.status === "running" && d.completed >= d.total) wf.status = wf.failed > 0 ? "failed" : "succeeded";
  scheduleChrome();
}

function finishWorkflow(id, success) {
  const wf = state.workflows.get(id);
  if (!wf) return; // recorded from elsewhere (a trace, POST /executions): not a run we watched
  wf.status = success ? "succeeded" : "failed";
  for (const task of wf.tasks.values()) {
    if (task.status === "started") view.setRunning(task.tool_id, false);
  }
  scheduleChrome();
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
  setCard("edges", m ? m.edge_count.toLocaleString("en-US") : "—", m?.edge_count);
  setCard("density", m ? formatDensity(m.density) : "—", m?.density);
  setCard("communities", m ? m.communities_count.toLocaleString("en-US") : "—", m?.communities_count);
  renderHitRate();
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
    const known = view.nodes.get(entry.tool_id);
    const prefix = known && known.server ? known.server + "__" : null;  // the server as reported, not parsed
    if (prefix && entry.tool_id.startsWith(prefix)) tool.append(span("srv", prefix), entry.tool_id.slice(prefix.length));
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

let chromeFrame = 0;

/** Everything around the canvas, at most once per frame (events may arrive by the thousand). */
function scheduleChrome() {
  if (!chromeFrame) chromeFrame = requestAnimationFrame(() => { chromeFrame = 0; renderGraphChrome(); });
}

function renderGraphChrome() {
  const canvas = $("graph");
  canvas.dataset.nodes = String(view.nodeCount);
  canvas.dataset.edges = String(view.edgeCount);
  const servers = new Set([...view.nodes.values()].map((n) => n.server).filter(Boolean));
  for (const name of state.servers.keys()) servers.add(name);
  let learned = 0;
  let down = 0;
  let external = 0;  // learned tools no configured server owns (POST /executions): never a made-up server
  for (const n of view.nodes.values()) {
    if (n.called) learned += 1;
    if (n.available === false) down += 1;
    if (!n.server) external += 1;
  }
  canvas.dataset.servers = String(servers.size);
  canvas.dataset.external = String(external);
  // Before the first GET /tools and /health: not "0 tools · 0 servers", which would be false.
  const known = state.stats.polls > 0 || view.nodeCount > 0;
  $("graph-counts").textContent = known
    ? `${count(view.nodeCount, "tool")}${external ? ` (${external} external)` : ""} · ${count(servers.size, "server")} · ` +
      count(view.edgeCount, "edge")
    : "loading tools…";
  $("empty").hidden = view.nodeCount > 0 || !known;

  let dependency = 0;
  for (const e of view.edges.values()) if (e.edge_type === "dependency") dependency += 1;
  setCard("tools", known ? view.nodeCount.toLocaleString("en-US") : "—", known ? view.nodeCount : null);
  const foot = $("m-tools-foot");
  foot.textContent = !known ? "" : (down ? `${down} down · ` : "") + `${count(servers.size, "server")} · ` +
    (external ? `${external} external · ` : "") + `${learned} learned`;
  foot.title = foot.textContent;
  $("m-edges-foot").textContent = `${dependency} dep · ${view.edgeCount - dependency} seq`;
  renderLegend();
  renderServers();
  renderWorkflows();
  renderCommunities();
  renderCounters();
}

function count(n, noun) {
  return `${n.toLocaleString("en-US")} ${noun}${n === 1 ? "" : "s"}`;
}

function renderServers() {
  const list = $("servers");
  list.replaceChildren();
  const names = [...state.servers.keys()].sort();
  const connected = names.filter((n) => state.servers.get(n).state === "connected").length;
  $("servers-count").textContent = names.length ? `${connected} / ${names.length} connected` : "";
  if (names.length === 0) {
    list.append(span("none-row", state.catalogKnown || state.stats.polls ? "No downstream servers configured." : "Loading…"));
    return;
  }
  for (const name of names) {
    const s = state.servers.get(name);
    const li = document.createElement("li");
    li.dataset.server = name;
    li.dataset.state = s.state ?? "";
    const line = span("line", "");
    line.append(span("dot", ""), span("sname", name), span("sstate", s.state ?? "?"));
    line.querySelector(".sname").title = name;
    const known = [...state.catalog.values()].filter((t) => t.server === name).length;
    const info = [`${s.tools} tool${s.tools === 1 ? "" : "s"}` + (known > s.tools ? ` of ${known}` : "")];
    if (s.transport) info.push(s.transport);
    if (s.restarts) info.push(`${s.restarts} restart${s.restarts === 1 ? "" : "s"}`);
    li.append(line, span("sinfo", info.join(" · ")));
    if (s.error && s.state !== "connected") {
      const err = span("serr", s.error);
      err.title = s.error;
      li.append(err);
    }
    list.append(li);
  }
}

function renderWorkflows() {
  const list = $("workflows");
  list.replaceChildren();
  const all = [...state.workflows.values()];
  const running = all.filter((w) => w.status === "running").sort((a, b) => a.at - b.at);
  const done = all.filter((w) => w.status !== "running").sort((a, b) => b.at - a.at);
  // Forget old finished runs for good.
  for (const w of done.slice(WORKFLOWS_KEPT)) state.workflows.delete(w.id);
  $("workflows-count").textContent = running.length ? `${running.length} running` : "";
  if (running.length + done.length === 0) {
    list.append(span("none-row", "No workflow has run since the page was loaded (pml_execute_workflow runs show here)."));
    return;
  }
  for (const w of [...running, ...done.slice(0, WORKFLOWS_KEPT)]) {
    const li = document.createElement("li");
    li.dataset.workflow = w.id;
    li.dataset.status = w.status;
    li.dataset.completed = String(w.completed);
    li.dataset.total = String(w.total);
    const line = span("line", "");
    const id = span("wid", w.id);
    id.title = w.id;
    line.append(id, span("wstatus", `${w.status} · ${w.completed}/${w.total}`));
    const bar = span("progress", "");
    const fill = document.createElement("i");
    fill.style.width = `${w.total ? Math.round((w.completed / w.total) * 100) : 0}%`;
    bar.append(fill);
    const now = [...w.tasks.entries()].filter(([, t]) => t.status === "started").map(([tid, t]) => `${tid}: ${t.tool_id}`);
    const extra = [w.failed ? `${w.failed} failed` : "", w.skipped ? `${w.skipped} skipped` : ""].filter(Boolean);
    const text = now.length ? `running ${now.join(", ")}` : extra.join(" · ");
    li.append(line, bar);
    if (text) {
      const t = span("wnow", text);
      t.title = text;
      li.append(t);
    }
    list.append(li);
  }
}

function renderCommunities() {
  const list = $("communities");
  list.replaceChildren();
  const groups = view.communityLabels();
  $("communities-count").textContent = groups.length ? String(groups.length) : "";
  if (groups.length === 0) {
    list.append(span("none-row", "Communities appear once tools have run and metrics were computed."));
    return;
  }
  groups.slice(0, 12).forEach((c, index) => {
    const li = document.createElement("li");
    li.dataset.community = String(c.community);
    const line = span("line", "");
    const sw = span("sw", "");
    sw.style.background = c.color;
    line.append(sw, span("cname", `Community ${index + 1}`), span("csize", count(c.size, "tool")));
    const top = span("ctop", c.top.join(" · "));
    top.title = `Top tools by PageRank: ${c.top.join(", ")}`;
    li.append(line, top);
    li.addEventListener("mouseenter", () => view.setFocus(c.top[0]));
    li.addEventListener("mouseleave", () => view.setFocus(null));
    list.append(li);
  });
  if (groups.length > 12) list.append(span("none-row", `+${groups.length - 12} smaller communities`));
}

function renderCounters() {
  const since = $("events-since-load");
  since.textContent = state.received.toLocaleString("en-US");
  since.dataset.value = String(state.received);
  const total = state.serverStats?.events_published;
  const el = $("events-total");
  el.textContent = total == null ? "—" : total.toLocaleString("en-US");
  el.dataset.value = total == null ? "" : String(total);
  setCard("events", total == null ? "—" : total.toLocaleString("en-US"), total);
  $("m-events-foot").textContent = `${state.received.toLocaleString("en-US")} since page load`;
}

/**
 * Suggestion hit rates, when the metrics carry them: any number under a key naming a hit rate,
 * at the top level or one object down. [{key, label, value}] with value in [0, 1] (or null).
 */
function hitRates(metrics) {
  const found = [];
  let evaluations = null;
  const label = (key) => {
    const k = /(?:top|at|@|k)_?(\d+)/i.exec(key);
    return k ? `top-${k[1]}` : key.replace(/_?hit_?rates?_?/i, "") || "hits";
  };
  // `rates`: inside an object named for hit rates ({"hit_rates": {"top_1": 0.4}}), every number is one.
  const visit = (obj, depth, rates) => {
    for (const [key, value] of Object.entries(obj ?? {})) {
      const named = /hit_?rate/i.test(key);
      if (value && typeof value === "object" && !Array.isArray(value)) {
        if (depth === 0) visit(value, 1, named);
      } else if ((named || rates) && (typeof value === "number" || value === null)) {
        found.push({ label: label(key), value });
      } else if (/evaluat/i.test(key) && typeof value === "number") {
        evaluations = value;
      }
    }
  };
  visit(metrics, 0, false);
  found.sort((a, b) => a.label.localeCompare(b.label, "en", { numeric: true }));
  return { rates: found, evaluations };
}

function renderHitRate() {
  const { rates, evaluations } = hitRates(state.metrics);
  const card = document.querySelector('.card[data-metric="hit-rate"]');
  card.hidden = rates.length === 0;
  if (rates.length === 0) return;
  // A fraction in [0, 1], or already a percentage.
  const pct = (v) => (v == null ? "—" : `${Math.round(v <= 1 ? v * 100 : v)}%`);
  setCard("hit-rate", rates.slice(0, 2).map((r) => `${r.label} ${pct(r.value)}`).join(" · "), rates[0].value);
  card.dataset.rates = JSON.stringify(Object.fromEntries(rates.map((r) => [r.label, r.value])));
  $("m-hit-rate-foot").textContent = evaluations == null ? "of proxied calls" : `${evaluations.toLocaleString("en-US")} graded calls`;
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
  const grey = span("item", "");
  grey.title = "Exposed by a connected server, never called yet";
  grey.append(span("sw uncalled", ""), "never called");
  const down = span("item", "");
  down.title = "Its server is down, or it left its server";
  down.append(span("sw down", ""), "unavailable");
  const size = span("item", "size: PageRank");
  const dep = span("item", "");
  dep.append(span("ln", ""), "dependency");
  const seq = span("item", "");
  seq.append(span("ln dashed", ""), "sequence");
  const conf = span("item", "");
  conf.title = "Edge colour and width: confidence (log scale)";
  conf.append("confidence", span("grad", ""));
  legend.append(colours, grey, down, span("sep", ""), size, span("sep", ""), dep, seq, conf);
  // Keep the fitted graph clear of the legend (bottom) and of the hint line (top).
  view.setInsets({ top: 16, bottom: legend.offsetHeight + 10 });
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
    const tool = state.catalog.get(n.id);
    const status = n.available === false ? "unavailable" : !n.called ? "never called" : n.available ? "available" : "—";
    tip.append(title,
      row("server", n.server ?? "external (no configured server)"),
      row("status", status),
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
    if (tool?.description) {
      const sub = document.createElement("div");
      sub.className = "t-sub";
      sub.textContent = tool.description.length > 160 ? tool.description.slice(0, 159) + "…" : tool.description;
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
    case "tool_added":
      return [plain(d.tool_id), dim(` · ${d.server}`)];
    case "tool_removed":
      return [plain(d.tool_id), dim(` · ${d.server} · `), ["bad", String(d.reason ?? "")]];
    case "tool_forgotten":
      return [plain(d.tool_id), dim(` · ${d.server ?? "external"} · `), ["bad", "history deleted"],
        dim(` · ${d.edges_removed} edges, ${d.transitions_removed} second-order counts`)];
    case "graph_reset":
      return [["bad", "graph reset"], dim(` · ${d.nodes_removed} tools, ${d.edges_removed} edges deleted`)];
    case "workflow_progress":
      return [plain(d.workflow_id), dim(` · ${d.task_id} `), plain(d.tool_id), dim(" "),
        [d.status === "failed" ? "bad" : d.status === "succeeded" ? "good" : "dim", d.status], dim(` · ${d.completed}/${d.total}`)];
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
    old.dropped = true;
    if (old.el) old.el.remove();
  }
  state.counts[type] += 1;
  // Rows are added once per frame: a burst of thousands of events costs one DOM update.
  logPending.push(entry);
  if (logPending.length > LOG_LIMIT) logPending = logPending.slice(-LOG_LIMIT);
  if (!logFrame) logFrame = requestAnimationFrame(flushLog);
}

let logPending = [];
let logFrame = 0;

function flushLog() {
  logFrame = 0;
  const rows = document.createDocumentFragment();
  for (let i = logPending.length - 1; i >= 0; i--) {
    const entry = logPending[i];
    if (!entry.dropped && shown.has(entry.type)) rows.append(logRow(entry, true));
  }
  logPending = [];
  if (rows.childNodes.length) {
    const list = $("log");
    list.querySelector(".empty-row")?.remove();
    list.prepend(rows);
  }
  for (const [type, el] of Object.entries(chipCounts)) el.textContent = String(state.counts[type]);
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
  logPending = []; // all rendered below
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
  get received() { return state.received; },
  get serverStats() { return state.serverStats; },
  get authRequired() { return auth.required; },
  servers() {
    return Object.fromEntries([...state.servers].map(([name, s]) => [name, { ...s, history: [...s.history] }]));
  },
  workflows() {
    return Object.fromEntries([...state.workflows].map(([id, w]) => [id, { ...w, tasks: Object.fromEntries(w.tasks) }]));
  },
  frameStats: () => view.frameStats(),
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
    return n && { id: n.id, server: n.server, pagerank: n.pagerank, community: n.community, color: view.colorOf(n), x: n.x, y: n.y, r: n.r,
      called: n.called, available: n.available, running: n.running > 0 };
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
$("auth-forget").hidden = !auth.key;
loadSnapshot("initial");
