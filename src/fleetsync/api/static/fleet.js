// Fleet: every cluster with status, agent, transport, last heartbeat, sync lag, objects, errors.
// Live: the events stream triggers a re-read of /api/v1/clusters (debounced), a slow timer the rest.
import { api, follow, sleep } from "./api.js";
import { ago, fill, h, kindOf, Pager, setLive } from "./dom.js";

const PAGE = 50;
const SLOW = 5000; // heartbeats and object counts, which produce no events
const EVENT_COALESCE = 1000; // events come in bursts (a fleet reconnecting): one re-read per second at most

/** gRPC peers are "ipv4:..." / "ipv6:..."; broker sessions "mqtt:CLUSTER/..." / "nats:...". */
function transportOf(message) {
  const peer = (message.match(/ from (\S+)$/) || [])[1] || "";
  if (peer.startsWith("mqtt")) return "mqtt";
  if (peer.startsWith("nats")) return "nats";
  if (peer.startsWith("ipv") || peer.startsWith("unix")) return "grpc";
  return peer ? peer.split(":")[0] : "";
}

/** fleetsync_sync_lag_seconds{cluster="c1"} 0.05 -> {c1: 0.05}. */
function syncLags(metrics) {
  const lags = {};
  for (const match of metrics.matchAll(/^fleetsync_sync_lag_seconds\{cluster="([^"]+)"\} (\S+)$/gm)) lags[match[1]] = Number(match[2]);
  return lags;
}

export function statusOf(cluster) {
  if (cluster.status === "inactive") return "stale";
  return cluster.status; // active | never
}

export async function fleetView(main, _args, signal) {
  const state = { clusters: [], transports: {}, lags: {}, filter: "", loaded: false };
  const filter = h("input", { type: "search", id: "fleet-filter", placeholder: "filter: name, status, agent, label…" });
  const summary = h("span", { class: "summary", id: "fleet-summary" });
  const table = h("table", { id: "clusters", class: "grid" });
  const pager = new Pager(PAGE, () => render());
  const pagerSlot = h("div");
  main.append(h("div", { class: "toolbar" }, h("h2", {}, "Fleet"), summary, filter), table, pagerSlot);
  filter.addEventListener("input", () => {
    state.filter = filter.value.trim().toLowerCase();
    pager.page = 0;
    render();
  });

  function matches(c) {
    if (!state.filter) return true;
    const labels = Object.entries(c.metadata || {}).map(([k, v]) => `${k}=${v}`);
    return [c.name, statusOf(c), c.agent, state.transports[c.name] || "", ...labels].some((text) => String(text).toLowerCase().includes(state.filter));
  }

  function render() {
    const rows = state.clusters.filter(matches);
    const counts = { active: 0, stale: 0, connected: 0 };
    for (const c of state.clusters) {
      counts[statusOf(c)] = (counts[statusOf(c)] || 0) + 1;
      if (c.connected) counts.connected += 1;
    }
    summary.textContent = `${state.clusters.length} clusters · ${counts.active} active · ${counts.stale} stale · ${counts.connected} agents connected`;
    const head = h(
      "tr",
      {},
      ["Cluster", "Status", "Agent", "Transport", "Last heartbeat", "Sync lag", "Objects", "Errors"].map((t) => h("th", {}, t)),
    );
    const body = pager.slice(rows).map((c) => {
      const errors = Object.entries(c.errors || {});
      const lag = state.lags[c.name];
      return h(
        "tr",
        { dataset: { cluster: c.name, status: statusOf(c), connected: String(c.connected) } },
        h("td", {}, h("a", { href: `#/cluster/${encodeURIComponent(c.name)}` }, c.name)),
        h("td", { class: "status" }, h("span", { class: `badge ${statusOf(c)}` }, statusOf(c)), c.connected ? "" : h("span", { class: "muted" }, " no agent")),
        h("td", { class: "agent" }, c.agent || "—"),
        h("td", { class: "transport" }, state.transports[c.name] || "—"),
        h("td", { class: "heartbeat", title: c.lastHeartbeat ? new Date(c.lastHeartbeat * 1000).toISOString() : "" }, ago(c.lastHeartbeat)),
        h("td", { class: "lag" }, lag === undefined ? "—" : `${(lag * 1000).toFixed(0)} ms`),
        h(
          "td",
          { class: "objects" },
          Object.entries(c.objects || {})
            .filter(([, n]) => n)
            .map(([type, n]) => h("span", { class: "count", dataset: { type }, title: type }, `${kindOf(type)} ${n}`)),
        ),
        h("td", { class: "errors" }, errors.length ? errors.map(([type, e]) => h("div", { class: "error", title: e }, `${kindOf(type)}: ${e}`)) : "—"),
      );
    });
    const empty = state.loaded && !rows.length ? h("tr", {}, h("td", { colspan: 8, class: "muted" }, state.clusters.length ? "no cluster matches" : "no cluster yet: start an agent")) : null;
    fill(table, h("thead", {}, head), h("tbody", {}, body, empty));
    fill(pagerSlot, pager.controls());
  }

  async function refresh() {
    const [clusters, metrics] = await Promise.all([api("/api/v1/clusters", { signal }), api("/metrics", { signal }).catch(() => "")]);
    state.clusters = clusters.items.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    state.lags = syncLags(metrics);
    state.loaded = true;
    render();
  }

  const connected = await api("/apis/fleetsync.io/v1/fleetsyncevents?reason=Connected&limit=10000", { signal });
  for (const e of connected.items) state.transports[e.cluster] = transportOf(e.message);
  await refresh();

  let pending = null; // a debounced refresh after events
  const soon = () => {
    pending ??= sleep(EVENT_COALESCE, signal).then(() => {
      pending = null;
      if (!signal.aborted) return refresh().catch(() => {});
    });
  };
  let since = 0;
  follow(
    () => `/apis/fleetsync.io/v1/fleetsyncevents?watch=1${since ? `&since=${since}` : ""}`,
    (e) => {
      since = e.id;
      if (e.reason === "Connected") state.transports[e.cluster] = transportOf(e.message);
      soon();
    },
    signal,
    setLive,
  );
  (async () => {
    while (!signal.aborted) {
      await sleep(SLOW, signal);
      if (!signal.aborted) await refresh().catch(() => {});
    }
  })();
}
