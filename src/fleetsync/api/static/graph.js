// Service graph: /api/v1/servicegraph as SVG, laid out in layers (a simple Sugiyama): a service
// sits one column right of the deepest service calling it (calls that close a cycle are drawn
// back, dashed), services in a column are ordered by where their callers are (fewer crossings),
// and edges are curves labelled rate / error rate / p99, coloured by error rate.
import { api, sleep } from "./api.js";
import { fill, h, s } from "./dom.js";

const COLUMN = 380;
const ROW = 90;
const NODE_W = 160;
const NODE_H = 40;
const LINE = 14; // a label's height: labels closer than this move apart

const id = (end) => `${end.service}.${end.namespace}`;

/** Edges that close a cycle: found by a depth-first walk that starts where calls start (the
 * services nothing calls, then those calling most and called least), so a cycle is broken
 * at the call that goes back towards the entry. */
function backEdges(ids, out) {
  const state = new Map(); // 1: on the walk's path, 2: done
  const back = new Set();
  const visit = (n) => {
    state.set(n, 1);
    for (const m of out.get(n)) {
      if (state.get(m) === 1) back.add(`${n} ${m}`);
      else if (!state.has(m)) visit(m);
    }
    state.set(n, 2);
  };
  const calledBy = new Map(ids.map((n) => [n, 0]));
  for (const callees of out.values()) for (const m of callees) calledBy.set(m, calledBy.get(m) + 1);
  const rank = (n) => [calledBy.get(n) ? 1 : 0, calledBy.get(n) - out.get(n).length];
  const order = (a, b) => rank(a)[0] - rank(b)[0] || rank(a)[1] - rank(b)[1] || a.localeCompare(b);
  for (const n of [...ids].sort(order)) if (!state.has(n)) visit(n);
  return back;
}

export function layout(nodes, edges) {
  const ids = nodes.map(id);
  const out = new Map(ids.map((n) => [n, []]));
  for (const e of edges) if (out.has(id(e.source)) && out.has(id(e.destination))) out.get(id(e.source)).push(id(e.destination));
  const back = backEdges(ids, out);
  const callers = new Map(ids.map((n) => [n, []]));
  for (const [m, callees] of out) for (const n of callees) if (!back.has(`${m} ${n}`)) callers.get(n).push(m);
  // longest path from the sources: a service is right of every caller (cycles broken at back edges)
  const depth = new Map();
  const deepest = (n) => {
    if (!depth.has(n)) depth.set(n, Math.max(0, ...callers.get(n).map((m) => deepest(m) + 1)));
    return depth.get(n);
  };
  ids.forEach(deepest);
  const columns = [];
  for (const n of ids) (columns[depth.get(n)] ??= []).push(n);
  // order each column by the mean row of its callers in the columns before (barycentre), twice
  const row = new Map();
  columns.forEach((column) => column.forEach((n, y) => row.set(n, y)));
  for (let sweep = 0; sweep < 2; sweep++) {
    for (const column of columns.slice(1)) {
      const centre = (n) => {
        const rows = callers.get(n).map((m) => row.get(m));
        return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : row.get(n);
      };
      const centres = new Map(column.map((n) => [n, centre(n)]));
      column.sort((a, b) => centres.get(a) - centres.get(b) || a.localeCompare(b));
      column.forEach((n, y) => row.set(n, y));
    }
  }
  const at = new Map();
  columns.forEach((column, x) => column.forEach((n, y) => at.set(n, { x: 30 + x * COLUMN, y: 30 + y * ROW })));
  return { at, back, width: 60 + columns.length * COLUMN, height: 60 + Math.max(1, ...columns.map((c) => c.length)) * ROW };
}

function label(e) {
  const p99 = e.latencyMs?.p99;
  return `${e.requestRate.toFixed(1)}/s · ${(e.errorRate * 100).toFixed(1)}% err · p99 ${p99 === null || p99 === undefined ? "—" : `${Math.round(p99)}ms`}`;
}

/** A cubic Bézier's point at ``t``. */
function bezier(t, p0, p1, p2, p3) {
  return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3;
}

/** The edge's curve and where its label goes. A call to the next column leaves the caller's right
 * side for the callee's left; one that skips columns dips below the row, between the services it
 * passes; a call back loops below, from the caller's bottom to the callee's; a call back within
 * a column loops round its right. */
function route(a, b, isBack) {
  const [y1, y2] = [a.y + NODE_H / 2, b.y + NODE_H / 2];
  const DIP = ROW / 2;
  if (!isBack && b.x > a.x) {
    const [x1, x2] = [a.x + NODE_W, b.x];
    const bend = (x2 - x1) / 2;
    const dip = x2 - x1 > COLUMN ? DIP + Math.abs(y2 - y1) / 4 : 0;
    const [c1, c2] = [y1 + dip * 1.3, y2 + dip * 1.3];
    // a label sits 60% of the way, where the edges fanning out of one service are apart
    const t = dip ? 0.5 : 0.6;
    return {
      d: `M ${x1} ${y1} C ${x1 + bend} ${c1}, ${x2 - bend} ${c2}, ${x2} ${y2}`,
      lx: bezier(t, x1, x1 + bend, x2 - bend, x2),
      ly: bezier(t, y1, c1, c2, y2) - 5,
    };
  }
  if (b.x === a.x && b.y !== a.y) {
    const x = a.x + NODE_W;
    const reach = x + 40 + Math.abs(y2 - y1) / 4;
    return { d: `M ${x} ${y1} C ${reach} ${y1}, ${reach} ${y2}, ${x} ${y2}`, lx: reach - 10, ly: (y1 + y2) / 2, anchor: "start" };
  }
  const [x1, x2, yb1, yb2] = [a.x + NODE_W / 2, b.x + NODE_W / 2, a.y + NODE_H, b.y + NODE_H];
  const low = Math.max(yb1, yb2) + DIP;
  return { d: `M ${x1} ${yb1} C ${x1} ${low}, ${x2} ${low}, ${x2} ${yb2}`, lx: (x1 + x2) / 2, ly: bezier(0.5, yb1, low, low, yb2) + 12 };
}

function draw(graph) {
  const { at, back, width, height } = layout(graph.nodes, graph.edges);
  const svg = s("svg", { id: "graph", width: width + 120, height: height + ROW / 2, viewBox: `0 0 ${width + 120} ${height + ROW / 2}` });
  svg.append(
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse" }, s("path", { d: "M 0 0 L 10 5 L 0 10 z" }))),
  );
  const placed = []; // label boxes drawn so far: one that would overlap moves down a line
  const place = (x, y, text, anchor) => {
    const half = text.length * 3.3;
    const centre = anchor === "start" ? x + half : x;
    while (placed.some((b) => Math.abs(b.centre - centre) < b.half + half && Math.abs(b.y - y) < LINE)) y += LINE;
    placed.push({ centre, y, half });
    return y;
  };
  for (const e of graph.edges) {
    const a = at.get(id(e.source));
    const b = at.get(id(e.destination));
    if (!a || !b) continue;
    const isBack = back.has(`${id(e.source)} ${id(e.destination)}`);
    const { d, lx, ly, anchor = "middle" } = route(a, b, isBack);
    const bad = e.errorRate >= 0.05 ? " bad" : e.errorRate > 0 ? " warn" : "";
    const group = s("g", { class: `edge${bad}${isBack ? " back" : ""}`, "data-source": id(e.source), "data-destination": id(e.destination) });
    const text = label(e);
    group.append(s("path", { d, "marker-end": "url(#arrow)" }));
    group.append(s("text", { x: lx, y: place(lx, ly, text, anchor), "text-anchor": anchor }, text));
    group.append(s("title", {}, `${id(e.source)} → ${id(e.destination)} in ${e.clusters.join(", ")}: ${text}`));
    svg.append(group);
  }
  for (const n of graph.nodes) {
    const p = at.get(id(n));
    svg.append(
      s(
        "g",
        { class: "node", "data-service": id(n), transform: `translate(${p.x},${p.y})` },
        s("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
        s("text", { x: NODE_W / 2, y: 17, "text-anchor": "middle" }, n.service),
        s("text", { x: NODE_W / 2, y: 32, "text-anchor": "middle", class: "ns" }, `${n.namespace} · ${n.clusters.length} cluster${n.clusters.length === 1 ? "" : "s"}`),
        s("title", {}, `${id(n)}: in ${n.requestRateIn.toFixed(1)}/s, out ${n.requestRateOut.toFixed(1)}/s; clusters ${n.clusters.join(", ")}`),
      ),
    );
  }
  return svg;
}

export async function graphView(main, _args, signal) {
  const clusters = (await api("/api/v1/clusters", { signal })).items.map((c) => c.name).sort();
  const chooser = h("select", { id: "graph-cluster" }, h("option", { value: "" }, "all clusters"), clusters.map((c) => h("option", { value: c }, c)));
  const info = h("span", { class: "summary" });
  const canvas = h("div", { class: "canvas" });
  const problems = h("div");
  main.append(h("div", { class: "toolbar" }, h("h2", {}, "Service graph"), chooser, info), problems, canvas);

  async function refresh() {
    const graph = await api(`/api/v1/servicegraph${chooser.value ? `?cluster=${encodeURIComponent(chooser.value)}` : ""}`, { signal });
    info.textContent = `${graph.nodes.length} services · ${graph.edges.length} edges · ${graph.clusters.length} clusters · window ${graph.window}s`;
    fill(problems, ...Object.entries(graph.errors || {}).map(([c, e]) => h("div", { class: "error" }, `${c}: ${e}`)));
    fill(canvas, graph.edges.length ? draw(graph) : h("p", { class: "muted" }, "no service graph: no agent reports one (agents need a Prometheus, see docs/mesh.md)"));
  }
  chooser.addEventListener("change", () => refresh().catch(() => {}));
  await refresh();
  while (!signal.aborted) {
    await sleep(10000, signal);
    if (!signal.aborted) await refresh().catch(() => {});
  }
}
