// Cluster: its types and objects (search, label selector, paging), an object's YAML, recent events.
// The objects of the type shown are followed live with a watch from the list's resourceVersion.
import { HubError, api, follow, sleep } from "./api.js";
import { ago, fill, h, kindOf, setLive, showError, time, yamlDocument } from "./dom.js";
import { statusOf } from "./fleet.js";

const PAGE = 100;

/** gvk ("v1/Pod", "apps/v1/Deployment") -> {plural, namespaced, path} from the cluster's discovery. */
async function discover(cluster, signal) {
  const base = `/clusters/${encodeURIComponent(cluster)}`;
  const lists = [["", "v1", await api(`${base}/api/v1`, { signal })]];
  const groups = await api(`${base}/apis`, { signal });
  for (const group of groups.groups || []) {
    for (const version of group.versions || []) {
      lists.push([group.name, version.version, await api(`${base}/apis/${group.name}/${version.version}`, { signal })]);
    }
  }
  const types = {};
  for (const [group, version, list] of lists) {
    for (const r of list.resources || []) {
      if (r.name.includes("/")) continue; // subresources
      const gv = group ? `${group}/${version}` : version;
      types[`${gv}/${r.kind}`] = { plural: r.name, namespaced: r.namespaced, path: `${base}/${group ? "apis" : "api"}/${gv}/${r.name}` };
    }
  }
  return types;
}

export async function clusterView(main, args, signal) {
  const fetchClusters = async () => (await api("/api/v1/clusters", { signal })).items.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  let clusters = await fetchClusters();
  let name = args[0] || clusters[0]?.name;
  const waiting = h("p", { class: "muted", id: "cluster-waiting" });
  main.append(waiting);
  // a cluster the hub does not know yet (its agent is starting): wait for it, as the fleet view would show it
  while (!signal.aborted && !clusters.find((c) => c.name === name)?.types.length) {
    waiting.textContent = name ? `waiting for cluster ${name} to reach this hub…` : "no cluster yet: waiting for an agent…";
    await sleep(2000, signal);
    clusters = await fetchClusters();
    name = args[0] || clusters[0]?.name;
  }
  if (signal.aborted) return;
  waiting.remove();
  const cluster = clusters.find((c) => c.name === name);
  const chooser = h(
    "select",
    { id: "cluster-select", onchange: () => (location.hash = `#/cluster/${encodeURIComponent(chooser.value)}`) },
    clusters.map((c) => h("option", { value: c.name, selected: c.name === name }, c.name)),
  );
  main.append(h("div", { class: "toolbar" }, h("h2", {}, "Cluster"), chooser));
  main.append(
    h(
      "p",
      { class: "facts" },
      h("span", { class: `badge ${statusOf(cluster)}` }, statusOf(cluster)),
      ` agent ${cluster.agent || "—"} ${cluster.connected ? "(connected)" : "(not connected)"} · last heartbeat ${ago(cluster.lastHeartbeat)}`,
      Object.keys(cluster.labels || {}).length ? ` · labels ${Object.entries(cluster.labels).map(([k, v]) => `${k}=${v}`).join(", ")}` : "",
      Object.keys(cluster.metadata || {}).length ? ` · reported ${Object.entries(cluster.metadata).map(([k, v]) => `${k}=${v}`).join(", ")}` : "",
    ),
  );

  const known = await discover(name, signal);
  const types = cluster.types.filter((t) => known[t]);
  const chosen = types.includes(args[1]) ? args[1] : types.find((t) => t === "v1/Service") || types[0];
  const typeList = h(
    "ul",
    { class: "types", id: "types" },
    types.map((t) =>
      h(
        "li",
        { class: t === chosen ? "active" : "" },
        h("a", { href: `#/cluster/${encodeURIComponent(name)}/${encodeURIComponent(t)}`, dataset: { type: t } }, kindOf(t), h("span", { class: "muted" }, ` ${cluster.objects[t] ?? 0}`)),
        cluster.errors?.[t] ? h("div", { class: "error" }, cluster.errors[t]) : null,
      ),
    ),
  );
  const search = h("input", { type: "search", id: "object-search", placeholder: "search namespace/name" });
  const selector = h("input", { type: "search", id: "label-selector", placeholder: "label selector, e.g. app=web,tier!=db" });
  const table = h("table", { id: "objects", class: "grid" });
  const more = h("button", { type: "button", id: "more", hidden: true }, "load more");
  const yaml = h("pre", { id: "yaml", class: "yaml", hidden: true });
  const events = h("table", { id: "cluster-events", class: "grid small" });
  main.append(
    h(
      "div",
      { class: "split" },
      h("aside", {}, h("h3", {}, "Types"), typeList),
      h(
        "section",
        {},
        h("div", { class: "toolbar" }, h("h3", {}, chosen ? kindOf(chosen) : "no types"), search, selector),
        table,
        more,
        yaml,
        h("h3", {}, "Recent events"),
        events,
      ),
    ),
  );

  // recent events of this cluster, then live
  const recent = (await api(`/apis/fleetsync.io/v1/fleetsyncevents?cluster=${encodeURIComponent(name)}&limit=50`, { signal })).items.reverse();
  const renderEvents = () =>
    fill(events,
      h("tr", {}, ["Time", "Reason", "Type", "Message"].map((t) => h("th", {}, t))),
      recent.slice(0, 50).map((e) => h("tr", { dataset: { reason: e.reason } }, h("td", {}, time(e.time)), h("td", {}, e.reason), h("td", {}, e.type || ""), h("td", {}, e.message))),
    );
  renderEvents();
  let since = recent[0]?.id || 0;
  follow(
    () => `/apis/fleetsync.io/v1/fleetsyncevents?watch=1&cluster=${encodeURIComponent(name)}${since ? `&since=${since}` : ""}`,
    (e) => {
      since = e.id;
      recent.unshift(e);
      renderEvents();
    },
    signal,
    () => {},
  );
  if (!chosen) return;

  const { path, namespaced } = known[chosen];
  const objects = new Map(); // namespace/name -> object
  let next = ""; // continue token
  let rv = "";
  let watching = null;
  const key = (o) => `${o.metadata.namespace || ""}/${o.metadata.name}`;

  function render() {
    const words = search.value.trim().toLowerCase();
    const rows = [...objects.values()].filter((o) => !words || key(o).toLowerCase().includes(words)).sort((a, b) => key(a).localeCompare(key(b)));
    fill(table,
      h("tr", {}, [namespaced ? "Namespace" : null, "Name", "Labels", "Revision"].filter(Boolean).map((t) => h("th", {}, t))),
      rows.map((o) =>
        h(
          "tr",
          { class: "clickable", dataset: { name: o.metadata.name, namespace: o.metadata.namespace || "" }, onclick: () => show(o) },
          namespaced ? h("td", {}, o.metadata.namespace) : null,
          h("td", {}, o.metadata.name),
          h("td", { class: "labels" }, Object.entries(o.metadata.labels || {}).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
          h("td", {}, o.metadata.resourceVersion),
        ),
      ),
      rows.length ? null : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "no objects")),
    );
    more.hidden = !next;
  }

  function show(o) {
    yaml.hidden = false;
    yaml.textContent = yamlDocument(o);
    yaml.dataset.object = key(o);
  }

  async function load(fresh) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (selector.value.trim()) query.set("labelSelector", selector.value.trim());
    if (!fresh && next) query.set("continue", next);
    const list = await api(`${path}?${query}`, { signal });
    if (fresh) objects.clear();
    for (const o of list.items) objects.set(key(o), o);
    next = list.metadata.continue || "";
    if (fresh) rv = list.metadata.resourceVersion;
    render();
  }

  function watch() {
    watching?.abort();
    watching = new AbortController();
    signal.addEventListener("abort", () => watching.abort());
    const mine = watching.signal;
    follow(
      () => {
        const query = new URLSearchParams({ watch: "1", resourceVersion: rv, allowWatchBookmarks: "true" });
        if (selector.value.trim()) query.set("labelSelector", selector.value.trim());
        return `${path}?${query}`;
      },
      (event) => {
        const o = event.object;
        if (event.type === "ERROR") {
          load(true).catch(() => {}); // 410: list again, then the next watch goes from there
          return;
        }
        rv = o.metadata.resourceVersion || rv;
        if (event.type === "BOOKMARK") return;
        if (event.type === "DELETED") objects.delete(key(o));
        else objects.set(key(o), o);
        render();
        if (yaml.dataset.object === key(o) && !yaml.hidden) show(o);
      },
      mine,
      setLive,
    );
  }

  search.addEventListener("input", render);
  selector.addEventListener("change", async () => {
    try {
      await load(true);
      showError("");
      watch();
    } catch (error) {
      if (!(error instanceof HubError)) throw error;
    }
  });
  more.addEventListener("click", () => load(false));
  await load(true);
  watch();
}
