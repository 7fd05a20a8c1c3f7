// A compact force-directed graph on a <canvas>: pan, zoom, hover, drag. No dependencies.
//
// Positions live in world units; `view` maps them to CSS pixels (screen = world * k + (x, y)).
// The simulation is velocity Verlet with a cooling `alpha`, as in d3-force: it stops by itself
// when the layout has settled and is reheated by structural changes, so an idle page costs nothing.
//
// A node is a tool. Tools the engine learned about are coloured by community; tools the gateway
// exposes but that never ran are grey (`called` false); tools whose server is down, or that left
// their server, are drawn hollow (`available` false). Without a tool list (`available` null) a
// learned tool is drawn as learned.
//
// Scale (a few thousand tools): drawing is culled to the visible rectangle; edges are batched per
// colour bucket and dash style and nodes per colour, so a frame is a few dozen canvas paths
// instead of one per element; past DASH_EDGES visible edges sequence edges are no longer dashed,
// past LOD_EDGES edges are straight lines without arrows. `frameStats()` reports the measured frame times (requestAnimationFrame intervals
// while animating, and the work done in each frame); the browser test prints them.

export const PALETTE = [
  "#60a5fa", "#f472b6", "#34d399", "#fbbf24", "#a78bfa", "#f87171",
  "#22d3ee", "#a3e635", "#fb923c", "#e879f9", "#2dd4bf", "#facc15",
];
export const NO_COMMUNITY = "#8391a7";
export const FLASH_COLORS = { created: "#4ade80", updated: "#fbbf24" };

const ALPHA_MIN = 0.002;
const ALPHA_DECAY = 1 - Math.pow(ALPHA_MIN, 1 / 300);
const VELOCITY_KEEP = 0.6;
const CHARGE = 320;               // repulsion between every pair
const CHARGE_RANGE2 = 700 * 700;  // beyond this distance, no repulsion (keeps components near)
const LINK_LENGTH = 46;
const GRAVITY = 0.045;            // pull toward the origin, so components do not drift apart
const COHESION = 0.06;            // pull toward the community's centroid: communities read as clusters
const COHESION_UNCALLED = 0.3;    // tools that never ran gather tightly around their server
const EXACT_LIMIT = 1200;         // above this many nodes, repulsion uses a grid with a cut-off
const GRID_CELL = 160;
const GRID_RANGE2 = GRID_CELL * GRID_CELL;
const FLASH_MS = 2600;
const FLASH_STEPS = 8;            // fading steps of a flash (each step one batched path)
const BASE_RADIUS = 4.5;
const RADIUS_RANGE = 14;
const LOD_EDGES = 2500;           // above this many visible edges: straight lines, no arrows
const DASH_EDGES = 600;           // above this many: no dashes (dashing curves is the costly part)
const EDGE_BUCKETS = 8;           // colour levels of batched edges
const UNCALLED = "#64748b";       // exposed, never ran
const UNAVAILABLE = "#2a3342";    // its server is down, or it left its server
const FRAME_SAMPLES = 240;
const MIN_SCREEN_RADIUS = 2.5;    // CSS px
const COMMUNITY_LABELS = 10;      // label at most this many communities on the canvas
const GROUP_LABELS_MS = 250;

function hashString(text) {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return h >>> 0;
}

function mix(a, b, t) {
  return a + (b - a) * t;
}

/**
 * Where a confidence sits on the edge scale, in [0, 1]. Logarithmic: learned confidences grow
 * with evidence and most edges sit between 0.01 and 0.3, where a linear scale shows nothing.
 */
export function confidenceLevel(confidence) {
  const floor = Math.log10(0.005);
  return Math.max(0, Math.min(1, (Math.log10(Math.max(confidence, 0.005)) - floor) / -floor));
}

/** Edge colour for a level from confidenceLevel: dim slate for weak evidence, bright sky for strong. */
export function edgeRgb(level) {
  const t = Math.max(0, Math.min(1, level));
  return [Math.round(mix(70, 56, t)), Math.round(mix(84, 189, t)), Math.round(mix(106, 248, t))];
}

export class GraphView {
  constructor(canvas, { onHover = () => {}, onFocus = () => {} } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onHover = onHover;
    this.onFocus = onFocus;
    this.nodes = new Map();
    this.edges = new Map();
    this.view = { k: 1, x: 0, y: 0 };
    this.autoFit = true;
    this.alpha = 1;
    this.alphaTarget = 0;
    this.frozen = false;
    this.showAllLabels = false;
    this.timeRaster = false;  // see _frame
    this.insets = { top: 0, right: 0, bottom: 0, left: 0 }; // CSS px covered by overlays
    this.hover = null;        // {kind: "node", node} | {kind: "edge", edge}
    this.focusId = null;      // sticky highlight: a clicked node or a row of the PageRank list
    this.communityColors = new Map();
    this.width = 0;
    this.height = 0;
    this.dpr = 1;
    this._nodeList = [];
    this._edgeList = [];
    this._listsStale = false;
    this._maxPagerank = 0;
    this._raf = 0;
    this._dirty = true;
    this._flashing = false;
    this._pointer = null;
    this._visibleEdges = [];
    this._frameWork = new Float64Array(FRAME_SAMPLES);
    this._frameGap = new Float64Array(FRAME_SAMPLES);
    this._frameCount = 0;
    this._gapCount = 0;
    this._lastFrameAt = 0;
    this._labelOrder = null;  // nodes by PageRank, rebuilt when ranks or the node set change
    this._sizesStale = false; // radii to recompute before the next frame
    this._groups = null;      // group labels, and when they were computed
    this._groupsAt = 0;
    this._frame = this._frame.bind(this);
    this._resize();
    new ResizeObserver(() => this._resize()).observe(canvas);
    this._bindPointer();
  }

  get nodeCount() { return this.nodes.size; }
  get edgeCount() { return this.edges.size; }

  // ---- data ------------------------------------------------------------------------------

  /** Replace everything with a snapshot; nodes that survive keep their place. */
  setGraph(nodes, edges) {
    const firstLoad = this.nodes.size === 0 || this.edges.size === 0;
    const keep = new Set(nodes.map((n) => n.id));
    for (const [id, node] of [...this.nodes]) {
      if (keep.has(id)) continue;
      if (node.inCatalog) node.called = false; // still exposed: back to never-called
      else this.nodes.delete(id);
    }
    this.edges.clear();
    for (const node of this.nodes.values()) { node.out.clear(); node.in.clear(); }
    for (const n of nodes) this._node(n.id, n).called = true;
    for (const e of edges) this._edge(e.from_tool_id, e.to_tool_id, e, null);
    this._afterStructure(1);
    this._recolor();
    this._resizeNodes();
    if (firstLoad) this._settle(120, 60);
    this.invalidate();
  }

  /**
   * An administrator deleted what was learned about `id` (tool_forgotten): its edges go; the tool
   * stays as a never-called one while the gateway still exposes it, else it goes too.
   */
  forgetNode(id) {
    const node = this.nodes.get(id);
    if (!node) return;
    for (const edge of [...node.out, ...node.in]) {
      this.edges.delete(edge.source.id + "\u0000" + edge.target.id);
      edge.source.out.delete(edge);
      edge.target.in.delete(edge);
    }
    if (node.inCatalog) {
      Object.assign(node, { called: false, pagerank: null, community: null });
    } else {
      this.nodes.delete(id);
      if (this.focusId === id) this.focusId = null;
      if (this.hover && (this.hover.node === node || (this.hover.edge && (this.hover.edge.source === node || this.hover.edge.target === node)))) {
        this.hover = null;
      }
    }
    this._listsStale = true;
    this._labelOrder = null;
    this._sizesStale = true;
    this._afterStructure(0.35);
    this._recolor();
    this.invalidate();
  }

  /** The learned graph was reset (graph_reset): no edges; exposed tools stay, never called. */
  forgetAll() {
    for (const node of this.nodes.values()) { node.pagerank = null; node.community = null; }
    this.hover = null;
    this.setGraph([], []);
  }

  /** PageRank and community of every node from a fresh snapshot, without touching the layout. */
  mergeAttributes(nodes) {
    for (const n of nodes) {
      const node = this.nodes.get(n.id);
      if (!node) continue;
      node.pagerank = n.pagerank ?? node.pagerank;
      node.community = n.community ?? null;
      if (n.server !== undefined) node.server = n.server;
    }
    this._labelOrder = null;
    this._recolor();
    this._resizeNodes();
    this.invalidate();
  }

  setPagerank(toolId, score) {
    const node = this.nodes.get(toolId);
    if (node) node.pagerank = score;
    this._labelOrder = null;
  }

  refreshSizes() {
    this._sizesStale = true;
    this.invalidate();
  }

  /** Add or update an edge (and its nodes); `flash` is "created", "updated" or null. */
  upsertEdge(from, to, attrs, flash) {
    const before = this.nodes.size + this.edges.size;
    const edge = this._edge(from, to, attrs, flash);
    const grew = this.nodes.size + this.edges.size !== before;
    if (grew) {
      this._afterStructure(0.35);
      this._sizesStale = true; // once per frame, not once per event: events come by the thousand
    }
    this.invalidate();
    return edge;
  }

  /** Tools that ran without (yet) being on an edge, e.g. a one-tool workflow. */
  ensureNodes(ids) {
    let added = false;
    for (const id of ids) {
      if (!this.nodes.has(id)) added = true;
      const node = this._node(id);
      if (!node.called) this._sizesStale = true;
      node.called = true;
    }
    if (added) this._afterStructure(0.35);
    this.invalidate();
  }

  /**
   * The tools the gateway exposes: `tools` is [{id, server, available}] (available false for a
   * tool that left, e.g. its server died). Adds never-called tools as grey nodes; a tool not in
   * the list that no longer ran is dropped; `available` of a learned tool not listed is
   * `unknown(node)` (true, false or null).
   */
  setCatalog(tools, unknown = () => null) {
    const listed = new Set();
    let added = false;
    for (const t of tools) {
      listed.add(t.id);
      if (!this.nodes.has(t.id)) added = true;
      const node = this._node(t.id, { server: t.server });
      node.inCatalog = true;
      node.available = t.available;
    }
    for (const [id, node] of [...this.nodes]) {
      if (listed.has(id)) continue;
      node.inCatalog = false;
      if (!node.called) { this.nodes.delete(id); added = true; continue; }
      node.available = unknown(node);
    }
    if (added) {
      this._afterStructure(0.5);
      this._sizesStale = true;
    }
    this.invalidate();
  }

  edge(from, to) {
    return this.edges.get(from + "\u0000" + to) || null;
  }

  /** Mark the tools of a running workflow task (a ring while it runs). */
  setRunning(id, running) {
    const node = this.nodes.get(id);
    if (!node) return;
    node.running = Math.max(0, (node.running || 0) + (running ? 1 : -1));
    this._flashing = true;
    this.invalidate();
  }

  /** Frame times in ms: `gap` between animation frames, `work` spent drawing (p50, p95, max). */
  frameStats() {
    const summary = (buffer, count) => {
      const values = Array.from(buffer.slice(0, Math.min(count, FRAME_SAMPLES))).sort((a, b) => a - b);
      const at = (q) => (values.length ? values[Math.min(values.length - 1, Math.floor(q * values.length))] : null);
      return { samples: values.length, p50: at(0.5), p95: at(0.95), max: values.length ? values[values.length - 1] : null };
    };
    return { gap: summary(this._frameGap, this._gapCount), work: summary(this._frameWork, this._frameCount),
      visibleEdges: this._visibleEdges.length, lod: this._visibleEdges.length > LOD_EDGES };
  }

  resetFrameStats() {
    this._frameCount = 0;
    this._gapCount = 0;
    this._lastFrameAt = 0;
  }

  /** Canvas labels: communities (of 3 tools or more) by top tools, never-called tools by server. */
  _groupLabels() {
    const labels = [];
    if (this.communityColors.size > 1) {
      for (const c of this.communityLabels().slice(0, COMMUNITY_LABELS)) {
        if (c.size < 3) break;
        labels.push({ text: `${c.top.slice(0, 2).join(" · ")}  (${c.size})`, color: c.color, x: c.x, y: c.y });
      }
    }
    const servers = new Map();
    for (const node of this.nodes.values()) {
      if (node.called || !node.server) continue;
      let g = servers.get(node.server);
      if (!g) servers.set(node.server, (g = { n: 0, down: 0, x: 0, top: Infinity }));
      g.n += 1;
      if (node.available === false) g.down += 1;
      g.x += node.x;
      g.top = Math.min(g.top, node.y - node.r);
    }
    for (const [server, g] of servers) {
      const text = g.down === g.n ? `${server} · unavailable` : `${server} · ${g.n} never called`;
      labels.push({ text, color: "#94a3b8", x: g.x / g.n, y: g.top });
    }
    return labels;
  }

  /** [{community, color, size, top: [ids by PageRank], x, y}] largest first. */
  communityLabels() {
    const groups = new Map();
    for (const node of this.nodes.values()) {
      if (node.community == null) continue;
      let g = groups.get(node.community);
      if (!g) groups.set(node.community, (g = { community: node.community, members: [], x: 0, top: Infinity }));
      g.members.push(node);
      g.x += node.x;
      g.top = Math.min(g.top, node.y - node.r);
    }
    return [...groups.values()]
      .sort((a, b) => b.members.length - a.members.length || a.community - b.community)
      .map((g) => ({
        community: g.community, color: this.colorOf({ community: g.community }), size: g.members.length,
        top: g.members.slice().sort((a, b) => (b.pagerank ?? 0) - (a.pagerank ?? 0)).slice(0, 3).map((n) => n.id),
        x: g.x / g.members.length, y: g.top,
      }));
  }

  /** Briefly ring the nodes of a workflow that just ran. */
  flashNodes(ids, ok) {
    const until = performance.now() + FLASH_MS;
    for (const id of ids) {
      const node = this.nodes.get(id);
      if (node) { node.flashUntil = until; node.flashOk = ok; }
    }
    this._flashing = true;
    this.invalidate();
  }

  setFocus(id) {
    this.focusId = id && this.nodes.has(id) ? id : null;
    this.invalidate();
  }

  setFrozen(frozen) {
    this.frozen = frozen;
    if (!frozen) this.reheat(0.3);
    this.invalidate();
  }

  setInsets(insets) {
    this.insets = { ...this.insets, ...insets };
    this.invalidate();
  }

  setShowAllLabels(show) {
    this.showAllLabels = show;
    this.invalidate();
  }

  reheat(alpha) {
    this.alpha = Math.max(this.alpha, alpha);
    this.invalidate();
  }

  fit() {
    this.autoFit = true;
    this.invalidate();
  }

  invalidate() {
    this._dirty = true;
    if (!this._raf) this._raf = requestAnimationFrame(this._frame);
  }

  /** Colour of a community id (stable across recomputations as far as membership allows). */
  colorOf(node) {
    if (node.available === false) return UNAVAILABLE;
    if (node.called === false) return UNCALLED;
    if (node.community == null) return NO_COMMUNITY;
    const index = this.communityColors.get(node.community);
    return index == null ? NO_COMMUNITY : PALETTE[index % PALETTE.length];
  }

  /** [{community, color, size}] largest first, for the legend. */
  communities() {
    const sizes = new Map();
    for (const node of this.nodes.values()) {
      if (node.community == null) continue;
      sizes.set(node.community, (sizes.get(node.community) || 0) + 1);
    }
    return [...sizes.entries()]
      .sort((a, b) => b[1] - a[1] || a[0] - b[0])
      .map(([community, size]) => ({ community, size, color: this.colorOf({ community }) }));
  }

  _node(id, attrs = {}) {
    let node = this.nodes.get(id);
    if (!node) {
      const h = hashString(id);
      const angle = (h % 3600) / 3600 * Math.PI * 2;
      const radius = 12 * Math.sqrt(this.nodes.size + 1) * (0.4 + ((h >>> 12) % 1000) / 1666);
      node = {
        id, server: null /* from /graph, /tools or tool_added: never parsed from the name */, pagerank: null, community: null,
        x: Math.cos(angle) * radius, y: Math.sin(angle) * radius, vx: 0, vy: 0, fx: null, fy: null,
        r: BASE_RADIUS, out: new Set(), in: new Set(), flashUntil: 0, flashOk: true, colorIndex: -1,
        called: false, inCatalog: false, available: null, running: 0,
      };
      this.nodes.set(id, node);
      this._listsStale = true;
      this._labelOrder = null;
    }
    if (attrs.server !== undefined) node.server = attrs.server;
    if (attrs.pagerank !== undefined) node.pagerank = attrs.pagerank;
    if (attrs.community !== undefined) node.community = attrs.community;
    return node;
  }

  _edge(from, to, attrs, flash) {
    const key = from + "\u0000" + to;
    let edge = this.edges.get(key);
    if (!edge) {
      const fresh = !this.nodes.has(from) || !this.nodes.has(to);
      const source = this._node(from);
      const target = this._node(to);
      if (!source.called || !target.called) this._sizesStale = true;
      source.called = true;
      target.called = true;
      // A new tool starts next to the tool it is linked to, not somewhere random.
      if (fresh) this._placeNear(source, target);
      edge = {
        source, target, confidence: 0.5, observed_count: 0, success_count: null, failure_count: null,
        edge_type: "sequence", last_observed: null, flashUntil: 0, flashKind: null,
      };
      this.edges.set(key, edge);
      source.out.add(edge);
      target.in.add(edge);
      this._listsStale = true;
    }
    for (const field of ["confidence", "observed_count", "success_count", "failure_count", "edge_type", "last_observed"]) {
      if (attrs[field] !== undefined && attrs[field] !== null) edge[field] = attrs[field];
    }
    if (flash) {
      edge.flashUntil = performance.now() + FLASH_MS;
      edge.flashKind = flash;
      this._flashing = true;
    }
    return edge;
  }

  _placeNear(a, b) {
    const aNew = a.out.size + a.in.size === 0;
    const bNew = b.out.size + b.in.size === 0;
    const jitter = (node) => (hashString(node.id) % 200 - 100) / 100 * 20;
    if (aNew && !bNew) { a.x = b.x + jitter(a); a.y = b.y + jitter(b); }
    else if (bNew && !aNew) { b.x = a.x + jitter(b); b.y = a.y + jitter(a); }
  }

  _afterStructure(alpha) {
    this._listsStale = true;
    this._labelOrder = null;
    this.reheat(alpha);
  }

  _lists() {
    if (this._listsStale) {
      this._nodeList = [...this.nodes.values()];
      this._edgeList = [...this.edges.values()];
      this._listsStale = false;
    }
    return [this._nodeList, this._edgeList];
  }

  _resizeNodes() {
    let max = 0;
    for (const node of this.nodes.values()) if (node.pagerank > max) max = node.pagerank;
    this._maxPagerank = max;
    // Past a hundred or so tools, sizes shrink: thousands of near-equal ranks would otherwise all
    // be drawn at the largest size, on top of each other.
    const range = RADIUS_RANGE / Math.max(1, Math.sqrt(this.nodes.size / 150));
    for (const node of this.nodes.values()) {
      node.r = !node.called ? BASE_RADIUS - 1
        : max > 0 && node.pagerank != null
          ? BASE_RADIUS + range * Math.sqrt(node.pagerank / max)
          : BASE_RADIUS + 1;
    }
  }

  // Louvain numbers communities afresh on every run; give each new community the colour most
  // of its members already had, so the picture does not flicker when metrics are recomputed.
  _recolor() {
    const groups = new Map();
    for (const node of this.nodes.values()) {
      if (node.community == null) continue;
      if (!groups.has(node.community)) groups.set(node.community, []);
      groups.get(node.community).push(node);
    }
    const ordered = [...groups.entries()].sort((a, b) => b[1].length - a[1].length || a[0] - b[0]);
    const used = new Set();
    const colors = new Map();
    for (const [community, members] of ordered) {
      const votes = new Map();
      for (const m of members) if (m.colorIndex >= 0) votes.set(m.colorIndex, (votes.get(m.colorIndex) || 0) + 1);
      let choice = -1;
      let best = 0;
      for (const [index, count] of votes) {
        if (!used.has(index) && count > best) { choice = index; best = count; }
      }
      if (choice < 0) {
        for (let i = 0; i < PALETTE.length; i++) if (!used.has(i)) { choice = i; break; }
      }
      if (choice < 0) choice = colors.size % PALETTE.length;
      used.add(choice);
      colors.set(community, choice);
    }
    for (const node of this.nodes.values()) {
      node.colorIndex = node.community == null ? -1 : colors.get(node.community);
    }
    this.communityColors = colors;
  }

  // ---- simulation ------------------------------------------------------------------------

  _settle(maxTicks, budgetMs) {
    const start = performance.now();
    for (let i = 0; i < maxTicks && performance.now() - start < budgetMs; i++) this._tick();
  }

  _tick() {
    const [nodes, edges] = this._lists();
    this.alpha += (this.alphaTarget - this.alpha) * ALPHA_DECAY;
    const alpha = this.alpha;
    const n = nodes.length;
    if (n === 0) return;

    for (const e of edges) {
      const s = e.source;
      const t = e.target;
      if (s === t) continue;
      let dx = t.x + t.vx - s.x - s.vx;
      let dy = t.y + t.vy - s.y - s.vy;
      const d = Math.sqrt(dx * dx + dy * dy) || 1e-6;
      const degS = s.out.size + s.in.size;
      const degT = t.out.size + t.in.size;
      const strength = (0.35 + 0.65 * confidenceLevel(e.confidence)) / Math.max(1, Math.min(degS, degT));
      const l = ((d - (LINK_LENGTH + s.r + t.r)) / d) * alpha * strength;
      dx *= l;
      dy *= l;
      const bias = degS / (degS + degT || 1);
      t.vx -= dx * bias;
      t.vy -= dy * bias;
      s.vx += dx * (1 - bias);
      s.vy += dy * (1 - bias);
    }

    if (n <= EXACT_LIMIT) {
      for (let i = 0; i < n; i++) {
        const p = nodes[i];
        for (let j = i + 1; j < n; j++) this._repel(p, nodes[j], alpha);
      }
    } else {
      this._repelGrid(nodes, alpha);
    }

    // Cohesion toward the community centroid, gravity toward the origin.
    // Tools that never ran have no community: they gather by server instead.
    const sums = new Map();
    for (const node of nodes) {
      const group = node.community ?? (node.server ? "s:" + node.server : null);
      node.group = group;
      if (group == null) continue;
      let s = sums.get(group);
      if (!s) sums.set(group, (s = { x: 0, y: 0, n: 0 }));
      s.x += node.x; s.y += node.y; s.n += 1;
    }
    for (const node of nodes) {
      const s = node.group == null ? null : sums.get(node.group);
      if (s && s.n > 1) {
        const pull = (node.called ? COHESION : COHESION_UNCALLED) * alpha;
        node.vx += (s.x / s.n - node.x) * pull;
        node.vy += (s.y / s.n - node.y) * pull;
      }
      node.vx -= node.x * GRAVITY * alpha;
      node.vy -= node.y * GRAVITY * alpha;
    }

    for (const node of nodes) {
      if (node.fx != null) {
        node.x = node.fx; node.y = node.fy; node.vx = 0; node.vy = 0;
        continue;
      }
      node.vx *= VELOCITY_KEEP;
      node.vy *= VELOCITY_KEEP;
      node.x += node.vx;
      node.y += node.vy;
    }
  }

  _repel(p, q, alpha, range2 = CHARGE_RANGE2) {
    let dx = q.x - p.x;
    let dy = q.y - p.y;
    let d2 = dx * dx + dy * dy;
    if (d2 > range2) return;
    if (d2 < 1e-4) {
      // Coincident nodes: separate them along a direction derived from their ids.
      const a = (hashString(p.id + q.id) % 628) / 100;
      dx = Math.cos(a) * 0.01; dy = Math.sin(a) * 0.01; d2 = 1e-4;
    }
    const f = (CHARGE * alpha) / Math.max(d2, 25);
    p.vx -= dx * f; p.vy -= dy * f;
    q.vx += dx * f; q.vy += dy * f;
    const min = p.r + q.r + 4;
    if (d2 < min * min) {
      const d = Math.sqrt(d2);
      const push = ((min - d) / d) * 0.35;
      p.vx -= dx * push; p.vy -= dy * push;
      q.vx += dx * push; q.vy += dy * push;
    }
  }

  _repelGrid(nodes, alpha) {
    const grid = new Map();
    for (const node of nodes) {
      const key = Math.floor(node.x / GRID_CELL) + "," + Math.floor(node.y / GRID_CELL);
      if (!grid.has(key)) grid.set(key, []);
      grid.get(key).push(node);
    }
    for (const [key, cell] of grid) {
      const [cx, cy] = key.split(",").map(Number);
      for (let gx = cx - 1; gx <= cx + 1; gx++) {
        for (let gy = cy - 1; gy <= cy + 1; gy++) {
          const other = grid.get(gx + "," + gy);
          if (!other) continue;
          // Each pair of cells once; within a cell, each pair once. The cut-off is one cell, so
          // that every pair in range is always seen: a force that jumped when a tool crossed a
          // cell border would pile tools up along the grid lines.
          if (other === cell) {
            for (let i = 0; i < cell.length; i++) for (let j = i + 1; j < cell.length; j++) this._repel(cell[i], cell[j], alpha, GRID_RANGE2);
          } else if (gx + "," + gy > key) {
            for (const p of cell) for (const q of other) this._repel(p, q, alpha, GRID_RANGE2);
          }
        }
      }
    }
  }

  // ---- view ------------------------------------------------------------------------------

  _resize() {
    const rect = this.canvas.getBoundingClientRect();
    this.dpr = window.devicePixelRatio || 1;
    this.width = Math.max(1, rect.width);
    this.height = Math.max(1, rect.height);
    this.canvas.width = Math.round(this.width * this.dpr);
    this.canvas.height = Math.round(this.height * this.dpr);
    this.invalidate();
  }

  _fitTarget() {
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    for (const node of this.nodes.values()) {
      minX = Math.min(minX, node.x - node.r); maxX = Math.max(maxX, node.x + node.r);
      minY = Math.min(minY, node.y - node.r); maxY = Math.max(maxY, node.y + node.r);
    }
    const pad = 36;
    const ins = this.insets;
    const left = ins.left + pad, top = ins.top + pad;
    const width = Math.max(40, this.width - ins.left - ins.right - 2 * pad);
    const height = Math.max(40, this.height - ins.top - ins.bottom - 2 * pad);
    if (!isFinite(minX)) return { k: 1, x: left + width / 2, y: top + height / 2 };
    const w = Math.max(maxX - minX, 60);
    const h = Math.max(maxY - minY, 60);
    // Labels hang to the right of their node: leave them some room.
    const k = Math.min(1.5, Math.max(0.05, Math.min((width - 60) / w, height / h)));
    return { k, x: left + (width - 60) / 2 - ((minX + maxX) / 2) * k, y: top + height / 2 - ((minY + maxY) / 2) * k };
  }

  _toWorld(sx, sy) {
    return [(sx - this.view.x) / this.view.k, (sy - this.view.y) / this.view.k];
  }

  _frame(now) {
    this._raf = 0;
    const started = performance.now();
    if (this._sizesStale) {
      this._sizesStale = false;
      this._resizeNodes();
    }
    let active = false;
    const simulating = !this.frozen && (this.alpha > ALPHA_MIN || this.alphaTarget > 0);
    if (simulating) {
      const n = this.nodes.size;
      const ticks = n < 300 ? 2 : 1;
      for (let i = 0; i < ticks; i++) this._tick();
      active = true;
    } else if (this._pointer && this._pointer.node) {
      active = true; // frozen, but a node is being dragged
    }
    if (this.autoFit) {
      const t = this._fitTarget();
      const v = this.view;
      const ease = simulating ? 0.12 : 0.25;
      v.k += (t.k - v.k) * ease; v.x += (t.x - v.x) * ease; v.y += (t.y - v.y) * ease;
      if (Math.abs(t.k - v.k) / t.k > 0.002 || Math.abs(t.x - v.x) > 0.5 || Math.abs(t.y - v.y) > 0.5) active = true;
    }
    this._draw();
    // For measurements: reading a pixel back makes the canvas rasterize now, so that the work
    // timed below includes drawing the pixels, not only issuing the commands.
    if (this.timeRaster) this.ctx.getImageData(0, 0, 1, 1);
    this._dirty = false;
    const again = active || this._flashing;
    // Frame time: the gap between consecutive animation frames (what a user sees), and the work.
    this._frameWork[this._frameCount++ % FRAME_SAMPLES] = performance.now() - started;
    if (this._lastFrameAt) this._frameGap[this._gapCount++ % FRAME_SAMPLES] = now - this._lastFrameAt;
    this._lastFrameAt = again ? now : 0;
    if (again) this._raf = requestAnimationFrame(this._frame);
  }

  _curve(e) {
    // A slight bend to the left of the direction of travel, so a->b and b->a never overlap.
    const s = e.source, t = e.target;
    const dx = t.x - s.x, dy = t.y - s.y;
    const d = Math.sqrt(dx * dx + dy * dy) || 1;
    const cx = (s.x + t.x) / 2 - (dy / d) * d * 0.12;
    const cy = (s.y + t.y) / 2 + (dx / d) * d * 0.12;
    const trim = (from, toward, r) => {
      const ux = toward.x - from.x, uy = toward.y - from.y;
      const ul = Math.sqrt(ux * ux + uy * uy) || 1;
      return [from.x + (ux / ul) * r, from.y + (uy / ul) * r];
    };
    const [x0, y0] = trim(s, { x: cx, y: cy }, s.r + 1);
    const [x1, y1] = trim(t, { x: cx, y: cy }, t.r + 2);
    return { x0, y0, cx, cy, x1, y1 };
  }

  /** The world rectangle on screen, with a margin: what lies outside is not drawn. */
  _visibleRect(margin) {
    const { k, x, y } = this.view;
    return { x0: (-x - margin) / k, y0: (-y - margin) / k, x1: (this.width - x + margin) / k, y1: (this.height - y + margin) / k };
  }

  _draw() {
    const ctx = this.ctx;
    const { k } = this.view;
    const now = performance.now();
    const [nodes, edges] = this._lists();
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.width, this.height);
    ctx.save();
    ctx.translate(this.view.x, this.view.y);
    ctx.scale(k, k);

    const hovered = this.hover && this.hover.kind === "node" ? this.hover.node : null;
    const center = hovered || (this.focusId && this.nodes.get(this.focusId)) || null;
    let near = null;
    if (center) {
      near = new Set([center]);
      for (const e of center.out) near.add(e.target);
      for (const e of center.in) near.add(e.source);
    }
    const hoveredEdge = this.hover && this.hover.kind === "edge" ? this.hover.edge : null;
    let flashing = false;

    const box = this._visibleRect(40);
    const inside = (n) => n.x + n.r >= box.x0 && n.x - n.r <= box.x1 && n.y + n.r >= box.y0 && n.y - n.r <= box.y1;
    const visible = [];
    for (const e of edges) {
      const s = e.source, t = e.target;
      // Culled when both ends are off screen on the same side (the bend stays within the box).
      if ((s.x < box.x0 && t.x < box.x0) || (s.x > box.x1 && t.x > box.x1) ||
          (s.y < box.y0 && t.y < box.y0) || (s.y > box.y1 && t.y > box.y1)) continue;
      visible.push(e);
    }
    this._visibleEdges = visible;
    // Edges batched per (confidence bucket, near the focus or not, dashed or not): a few dozen
    // strokes per frame whatever the count. Past LOD_EDGES, straight lines without arrows.
    const simple = visible.length > LOD_EDGES;
    const groups = new Map();
    for (const e of visible) {
      if (e === hoveredEdge) continue; // drawn alone, on top
      const touches = !center || e.source === center || e.target === center;
      const bucket = Math.min(EDGE_BUCKETS - 1, Math.floor(confidenceLevel(e.confidence) * EDGE_BUCKETS));
      const dashed = visible.length <= DASH_EDGES && e.edge_type === "sequence";
      const key = (bucket * 2 + (touches ? 1 : 0)) * 2 + (dashed ? 1 : 0);
      addTo(groups, key, e);
    }
    ctx.lineCap = "round";
    for (const [key, list] of groups) {
      const dashed = key % 2 === 1;
      const touches = Math.floor(key / 2) % 2 === 1;
      const level = (Math.floor(key / 4) + 0.5) / EDGE_BUCKETS;
      const rgb = edgeRgb(level);
      const alpha = touches ? (center ? 0.95 : simple ? 0.12 + 0.45 * level : 0.22 + 0.6 * level) : 0.05;
      ctx.strokeStyle = ctx.fillStyle = `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${alpha})`;
      ctx.lineWidth = ((simple ? 0.5 + 1.5 * level * level : 0.6 + 2.4 * level * level)) / k;
      ctx.setLineDash(dashed ? [6 / k, 3 / k] : []);
      ctx.beginPath();
      this._traceEdges(ctx, list, simple);
      ctx.stroke();
      if (!simple) {
        ctx.beginPath();
        for (const e of list) this._traceArrow(ctx, e, (3.5 + 3 * level) / k);
        ctx.fill();
      }
    }
    ctx.setLineDash([]);
    if (hoveredEdge) {
      const level = confidenceLevel(hoveredEdge.confidence);
      const rgb = edgeRgb(level);
      ctx.strokeStyle = ctx.fillStyle = `rgba(${rgb[0]},${rgb[1]},${rgb[2]},0.95)`;
      ctx.lineWidth = (2.1 + 2.4 * level * level) / k;
      ctx.setLineDash(hoveredEdge.edge_type === "sequence" ? [6 / k, 3 / k] : []);
      this._pathEdge(ctx, hoveredEdge);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.beginPath();
      this._traceArrow(ctx, hoveredEdge, (3.5 + 3 * level) / k);
      ctx.fill();
    }
    // Flashes (new edges green, updated amber), batched per colour and fading step.
    const flashes = new Map();
    for (const e of visible) {
      if (e.flashUntil <= now) continue;
      flashing = true;
      const step = Math.min(FLASH_STEPS - 1, Math.floor(((e.flashUntil - now) / FLASH_MS) * FLASH_STEPS));
      const key = (e.flashKind === "created" ? "created" : "updated") + step;
      addTo(flashes, key, e);
    }
    for (const [key, list] of flashes) {
      const f = (Number(key.slice(-1)) + 0.5) / FLASH_STEPS;
      ctx.globalAlpha = Math.min(1, f * 1.4);
      ctx.strokeStyle = FLASH_COLORS[key.slice(0, -1)];
      ctx.lineWidth = (3 + 4 * f) / k;
      ctx.beginPath();
      this._traceEdges(ctx, list, simple);
      ctx.stroke();
    }
    ctx.globalAlpha = 1;

    // Nodes: batched per colour (and dimmed or not); the few special ones drawn on top.
    const batches = new Map();
    const special = [];
    const flashed = [];
    for (const node of nodes) {
      if (!inside(node)) continue;
      if (node.flashUntil > now) flashed.push(node);
      if (node === center || node.running > 0 || node.available === false) {
        special.push(node);
        continue;
      }
      const key = this.colorOf(node) + (near && !near.has(node) ? "|dim" : "");
      addTo(batches, key, node);
    }
    const outline = 1.5 / k;
    const minR = MIN_SCREEN_RADIUS / k; // zoomed far out, a tool stays a visible dot
    for (const [key, list] of batches) {
      const [color, dim] = key.split("|");
      ctx.globalAlpha = dim ? 0.25 : 1;
      ctx.beginPath();
      for (const node of list) {
        const r = Math.max(node.r, minR);
        if (r * k < 3 && list.length > 200) {
          ctx.rect(node.x - r, node.y - r, 2 * r, 2 * r); // hundreds of specks: squares cost less, look the same
        } else {
          ctx.moveTo(node.x + r, node.y);
          ctx.arc(node.x, node.y, r, 0, Math.PI * 2);
        }
      }
      ctx.fillStyle = color;
      ctx.fill();
      if (nodeOutline(list, k)) {
        ctx.lineWidth = outline;
        ctx.strokeStyle = "rgba(8,12,20,0.9)";
        ctx.stroke();
      }
    }
    ctx.globalAlpha = 1;
    for (const node of special) {
      const dim = near && !near.has(node);
      ctx.globalAlpha = dim ? 0.25 : 1;
      ctx.beginPath();
      ctx.arc(node.x, node.y, Math.max(node.r, minR), 0, Math.PI * 2);
      ctx.fillStyle = this.colorOf(node);
      ctx.fill();
      if (node.available === false) {
        // Its server is down: hollow, dashed.
        ctx.setLineDash([3 / k, 2 / k]);
        ctx.lineWidth = 1.4 / k;
        ctx.strokeStyle = "#7c8799";
        ctx.stroke();
        ctx.setLineDash([]);
      } else {
        ctx.lineWidth = (node === center ? 2.5 : 1.5) / k;
        ctx.strokeStyle = node === center ? "#f8fafc" : "rgba(8,12,20,0.9)";
        ctx.stroke();
      }
      if (node.running > 0) {
        flashing = true;
        const phase = (now % 1200) / 1200;
        ctx.globalAlpha = 1 - phase;
        ctx.strokeStyle = "#38bdf8";
        ctx.lineWidth = 2 / k;
        ctx.beginPath();
        ctx.arc(node.x, node.y, node.r + (2 + phase * 8) / k, 0, Math.PI * 2);
        ctx.stroke();
      }
      ctx.globalAlpha = 1;
    }
    // Rings around the tools of a workflow that just ran, batched per outcome and fading step.
    const rings = new Map();
    for (const node of flashed) {
      flashing = true;
      const step = Math.min(FLASH_STEPS - 1, Math.floor(((node.flashUntil - now) / FLASH_MS) * FLASH_STEPS));
      const key = (node.flashOk ? "ok" : "bad") + step;
      addTo(rings, key, node);
    }
    ctx.lineWidth = 2 / k;
    for (const [key, list] of rings) {
      const f = (Number(key.slice(-1)) + 0.5) / FLASH_STEPS;
      ctx.globalAlpha = f;
      ctx.strokeStyle = key.startsWith("ok") ? FLASH_COLORS.created : "#f87171";
      ctx.beginPath();
      for (const node of list) {
        const r = Math.max(node.r, minR) + (3 + (1 - f) * 10) / k;
        ctx.moveTo(node.x + r, node.y);
        ctx.arc(node.x, node.y, r, 0, Math.PI * 2);
      }
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    ctx.restore();
    this._flashing = flashing;
    this._labels(nodes, center, near);
  }

  _pathEdge(ctx, e) {
    ctx.beginPath();
    this._traceEdge(ctx, e);
  }

  /** Add these edges to the current path: straight lines, or their curves. */
  _traceEdges(ctx, edges, straight) {
    for (const e of edges) {
      if (straight) {
        ctx.moveTo(e.source.x, e.source.y);
        ctx.lineTo(e.target.x, e.target.y);
      } else {
        this._traceEdge(ctx, e);
      }
    }
  }

  /** Add the edge's curve (a loop for a self-edge) to the current path. */
  _traceEdge(ctx, e) {
    if (e.source === e.target) {
      const n = e.source;
      ctx.moveTo(n.x + 6, n.y - n.r - 5);
      ctx.arc(n.x, n.y - n.r - 5, 6, 0, Math.PI * 2);
      return;
    }
    const c = this._curve(e);
    ctx.moveTo(c.x0, c.y0);
    ctx.quadraticCurveTo(c.cx, c.cy, c.x1, c.y1);
  }

  /** Add the edge's arrow head to the current path. */
  _traceArrow(ctx, e, size) {
    if (e.source === e.target) return;
    const c = this._curve(e);
    const angle = Math.atan2(c.y1 - c.cy, c.x1 - c.cx);
    ctx.moveTo(c.x1, c.y1);
    ctx.lineTo(c.x1 - size * Math.cos(angle - 0.45), c.y1 - size * Math.sin(angle - 0.45));
    ctx.lineTo(c.x1 - size * Math.cos(angle + 0.45), c.y1 - size * Math.sin(angle + 0.45));
    ctx.closePath();
  }

  _labels(nodes, center, near) {
    const ctx = this.ctx;
    const { k, x: tx, y: ty } = this.view;
    const placed = [];
    const overlaps = (b) => placed.some((p) => b[0] < p[2] && b[2] > p[0] && b[1] < p[3] && b[3] > p[1]);
    const labelled = new Set();

    const nodeLabel = (node) => {
      if (labelled.has(node) || labelled.size > 400) return; // more than that cannot be read anyway
      const sx = node.x * k + tx + node.r * k + 4;
      const sy = node.y * k + ty;
      if (sx > this.width || sy < -10 || sy > this.height + 10 || sx < -300) return;
      ctx.font = "11px ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace";
      ctx.textBaseline = "middle";
      const text = node.id.length > 32 ? node.id.slice(0, 31) + "…" : node.id;
      const w = ctx.measureText(text).width;
      if (sx + w < 0) return;
      const b = [sx - 2, sy - 7, sx + w + 2, sy + 7];
      if (node !== center && overlaps(b)) return;
      placed.push(b);
      labelled.add(node);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(11,15,23,0.92)";
      ctx.strokeText(text, sx, sy);
      ctx.fillStyle = node === center ? "#ffffff" : near ? "#e2e8f0"
        : node.called === false || node.available === false ? "#7c8799" : "#b8c4d6";
      ctx.fillText(text, sx, sy);
    };

    // Group names: each community by its top tools, each server's never-called tools by its name.
    const groupNames = () => {
      ctx.font = "600 11px system-ui, 'DejaVu Sans', sans-serif";
      ctx.textBaseline = "bottom";
      // Recomputed at most every GROUP_LABELS_MS: it walks and sorts every node.
      if (!this._groups || performance.now() - this._groupsAt > GROUP_LABELS_MS) {
        this._groups = this._groupLabels();
        this._groupsAt = performance.now();
      }
      for (const g of this._groups) {
        const w = ctx.measureText(g.text).width;
        const sx = g.x * k + tx - w / 2;
        const sy = g.y * k + ty - 6;
        const b = [sx - 3, sy - 14, sx + w + 3, sy + 1];
        if (b[2] < 0 || b[0] > this.width || b[3] < 0 || b[1] > this.height || overlaps(b)) continue;
        placed.push(b);
        ctx.lineWidth = 4;
        ctx.strokeStyle = "rgba(11,15,23,0.92)";
        ctx.strokeText(g.text, sx, sy);
        ctx.fillStyle = g.color;
        ctx.fillText(g.text, sx, sy);
      }
    };

    ctx.lineJoin = "round";
    if (!this._labelOrder) {
      this._labelOrder = nodes.slice().sort((a, b) => (b.pagerank ?? -1) - (a.pagerank ?? -1) || (a.id < b.id ? -1 : 1));
    }
    const order = this._labelOrder;
    if (near) {
      // A focused tool: it and its neighbours (everything else too, with "All labels").
      for (const node of near) nodeLabel(node);
      if (this.showAllLabels) for (const node of order) nodeLabel(node);
      return;
    }
    // The learned tools with the highest PageRank (and any drawn large) first, then the group
    // names, then every other tool when zoomed in, asked for, or few.
    let top = 0;
    for (const node of order) {
      if (node.called && top < 14) { nodeLabel(node); top += 1; }
      else if (node.r * k >= 11) nodeLabel(node);
    }
    groupNames();
    if (this.showAllLabels || k >= 1.6 || nodes.length <= 24) for (const node of order) nodeLabel(node);
  }

  // ---- pointer ---------------------------------------------------------------------------

  _nodeAt(sx, sy) {
    const [wx, wy] = this._toWorld(sx, sy);
    const slack = 4 / this.view.k;
    let best = null;
    let bestD = Infinity;
    for (const node of this.nodes.values()) {
      const d = Math.hypot(node.x - wx, node.y - wy);
      if (d <= node.r + slack && d < bestD) { best = node; bestD = d; }
    }
    return best;
  }

  _edgeAt(sx, sy) {
    const [wx, wy] = this._toWorld(sx, sy);
    const limit = 5 / this.view.k;
    let best = null;
    let bestD = limit;
    // Only what is drawn, and not among thousands of batched lines (no single one can be aimed at).
    if (this._visibleEdges.length > LOD_EDGES) return null;
    for (const e of this._visibleEdges) {
      let d;
      if (e.source === e.target) {
        const n = e.source;
        d = Math.abs(Math.hypot(wx - n.x, wy - n.y + n.r + 5) - 6);
      } else {
        const c = this._curve(e);
        d = Infinity;
        let px = c.x0, py = c.y0;
        for (let i = 1; i <= 12; i++) {
          const t = i / 12;
          const qx = (1 - t) * (1 - t) * c.x0 + 2 * (1 - t) * t * c.cx + t * t * c.x1;
          const qy = (1 - t) * (1 - t) * c.y0 + 2 * (1 - t) * t * c.cy + t * t * c.y1;
          d = Math.min(d, segmentDistance(wx, wy, px, py, qx, qy));
          px = qx; py = qy;
        }
      }
      if (d < bestD) { best = e; bestD = d; }
    }
    return best;
  }

  _setHover(hover, sx, sy) {
    const same = (this.hover && hover && this.hover.kind === hover.kind &&
      (this.hover.node || this.hover.edge) === (hover.node || hover.edge)) || (!this.hover && !hover);
    this.hover = hover;
    this.canvas.classList.toggle("over-node", !!(hover && hover.kind === "node"));
    this.onHover(hover, sx, sy);
    if (!same) this.invalidate();
  }

  _bindPointer() {
    const c = this.canvas;
    const local = (ev) => {
      const rect = c.getBoundingClientRect();
      return [ev.clientX - rect.left, ev.clientY - rect.top];
    };
    c.addEventListener("pointerdown", (ev) => {
      if (ev.button !== 0) return;
      const [sx, sy] = local(ev);
      const node = this._nodeAt(sx, sy);
      c.setPointerCapture(ev.pointerId);
      this._pointer = { sx, sy, startX: sx, startY: sy, node, moved: false };
      if (node) {
        node.fx = node.x; node.fy = node.y;
        this.alphaTarget = 0.25;
        this.reheat(0.25);
      }
      c.classList.add("dragging");
    });
    c.addEventListener("pointermove", (ev) => {
      const [sx, sy] = local(ev);
      const p = this._pointer;
      if (p) {
        if (Math.hypot(sx - p.startX, sy - p.startY) > 3) p.moved = true;
        if (p.node) {
          const [wx, wy] = this._toWorld(sx, sy);
          p.node.fx = wx; p.node.fy = wy;
          if (this.frozen) { p.node.x = wx; p.node.y = wy; }
        } else if (p.moved) {
          this.view.x += sx - p.sx;
          this.view.y += sy - p.sy;
          this.autoFit = false;
        }
        p.sx = sx; p.sy = sy;
        this.invalidate();
        return;
      }
      const node = this._nodeAt(sx, sy);
      if (node) return this._setHover({ kind: "node", node }, sx, sy);
      const edge = this._edgeAt(sx, sy);
      this._setHover(edge ? { kind: "edge", edge } : null, sx, sy);
    });
    const release = (ev) => {
      const p = this._pointer;
      if (!p) return;
      this._pointer = null;
      c.classList.remove("dragging");
      if (p.node) {
        p.node.fx = null; p.node.fy = null;
        this.alphaTarget = 0;
      }
      if (!p.moved && ev.type === "pointerup") {
        const id = p.node ? p.node.id : null;
        this.focusId = id && id !== this.focusId ? id : null;
        this.onFocus(this.focusId);
      }
      this.invalidate();
    };
    c.addEventListener("pointerup", release);
    c.addEventListener("pointercancel", release);
    c.addEventListener("pointerleave", () => { if (!this._pointer) this._setHover(null, 0, 0); });
    c.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const [sx, sy] = local(ev);
      const v = this.view;
      const k = Math.min(8, Math.max(0.05, v.k * Math.exp(-ev.deltaY * 0.0015)));
      v.x = sx - ((sx - v.x) / v.k) * k;
      v.y = sy - ((sy - v.y) / v.k) * k;
      v.k = k;
      this.autoFit = false;
      this.invalidate();
    }, { passive: false });
    c.addEventListener("dblclick", () => this.fit());
  }
}

function segmentDistance(px, py, ax, ay, bx, by) {
  const dx = bx - ax, dy = by - ay;
  const len2 = dx * dx + dy * dy;
  const t = len2 ? Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / len2)) : 0;
  return Math.hypot(px - (ax + t * dx), py - (ay + t * dy));
}

/** Outlines only where they can be seen (they cost as much as the fill): a few dozen tools,
 * or tools drawn at least 6 px wide. */
function nodeOutline(list, k) {
  return list.length <= 50 || list[0].r * k >= 6;
}

/** Add `item` to the list kept under `key` in the map `groups`. */
function addTo(groups, key, item) {
  const list = groups.get(key);
  if (list) list.push(item);
  else groups.set(key, [item]);
}
