// Events: the fleet's cluster events, newest first, live, filtered by cluster and reason.
import { api, follow } from "./api.js";
import { fill, h, setLive, time } from "./dom.js";

const REASONS = [
  "Connected", "Disconnected", "Rejected", "Inactive", "Active", "ResyncRequested", "ResyncStarted", "ResyncFinished",
  "GapDetected", "TypeFailed", "TypeRecovered", "TypeRefused", "Refreshed", "RefreshFailed", "ClusterNew", "ClusterChanged",
  "AgentUp", "AgentDown", "NodeUp", "NodeDown", "GateRefused", "WorkFailed", "WorkStatusRefused",
];
const KEEP = 500;

export async function eventsView(main, _args, signal) {
  const cluster = h("input", { type: "search", id: "events-cluster", placeholder: "cluster" });
  const reason = h("select", { id: "events-reason" }, h("option", { value: "" }, "every reason"), REASONS.map((r) => h("option", { value: r }, r)));
  const words = h("input", { type: "search", id: "events-search", placeholder: "search messages" });
  const table = h("table", { id: "events", class: "grid" });
  main.append(h("div", { class: "toolbar" }, h("h2", {}, "Events"), cluster, reason, words), table);
  let events = [];
  let stream = null;

  const shown = (e) => !words.value || `${e.message} ${e.type}`.toLowerCase().includes(words.value.toLowerCase());
  function render() {
    fill(table,
      h("tr", {}, ["Time", "Cluster", "Reason", "Type", "Message", "Hub"].map((t) => h("th", {}, t))),
      events.filter(shown).map((e) =>
        h(
          "tr",
          { dataset: { id: String(e.id), cluster: e.cluster, reason: e.reason } },
          h("td", {}, time(e.time)),
          h("td", {}, h("a", { href: `#/cluster/${encodeURIComponent(e.cluster)}` }, e.cluster)),
          h("td", { class: `reason ${e.reason}` }, e.reason),
          h("td", {}, e.type || ""),
          h("td", {}, e.message),
          h("td", { class: "muted" }, e.hub),
        ),
      ),
    );
  }

  async function start() {
    stream?.abort();
    stream = new AbortController();
    signal.addEventListener("abort", () => stream.abort());
    const query = new URLSearchParams({ limit: "200" });
    if (cluster.value.trim()) query.set("cluster", cluster.value.trim());
    if (reason.value) query.set("reason", reason.value);
    events = (await api(`/apis/fleetsync.io/v1/fleetsyncevents?${query}`, { signal })).items.reverse();
    render();
    let since = events[0]?.id || 0;
    query.delete("limit");
    query.set("watch", "1");
    follow(
      () => `/apis/fleetsync.io/v1/fleetsyncevents?${query}${since ? `&since=${since}` : ""}`,
      (e) => {
        since = e.id;
        events.unshift(e);
        events.length = Math.min(events.length, KEEP);
        render();
      },
      stream.signal,
      setLive,
    );
  }

  cluster.addEventListener("change", start);
  reason.addEventListener("change", start);
  words.addEventListener("input", render);
  await start();
}
