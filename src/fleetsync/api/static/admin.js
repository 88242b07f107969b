// Gates and works: list and edit (writes need an admin token; a read token's refusal is shown
// as the hub words it), with each cluster's status.
import { HubError, api, sleep } from "./api.js";
import { fill, h, Pager, showError, showNotice, time, yamlDocument } from "./dom.js";
import { statusOf } from "./fleet.js";

const GATES = "/1.0/feature-gates";
const WORKS = "/api/v1/works";

async function attempt(action, done) {
  try {
    await action();
    showNotice(done);
    return true;
  } catch (error) {
    if (!(error instanceof HubError)) showError(String(error));
    return false; // a HubError is shown by the banner already
  }
}

export async function gatesView(main, _args, signal) {
  const table = h("table", { id: "gates", class: "grid" });
  const key = h("input", { id: "gate-key", placeholder: "feature.name", pattern: "feature\\..+", required: true });
  const enabled = h("select", { id: "gate-enabled" }, h("option", { value: "true" }, "enabled"), h("option", { value: "false" }, "disabled"));
  const form = h("form", { id: "gate-form", class: "toolbar" }, h("strong", {}, "Set a gate"), key, enabled, h("button", { type: "submit" }, "Set"));
  const clusterTable = h("table", { id: "gate-clusters", class: "grid small" });
  main.append(
    h("div", { class: "toolbar" }, h("h2", {}, "Feature gates")),
    table,
    form,
    h("h3", {}, "Clusters"),
    h("p", { class: "muted" }, "The hub pushes every gate to each connected agent at once; refusals are the GateRefused events."),
    clusterTable,
  );

  async function refresh() {
    const [gates, clusters, refused] = await Promise.all([
      api(GATES, { signal }),
      api("/api/v1/clusters", { signal }),
      api("/apis/fleetsync.io/v1/fleetsyncevents?reason=GateRefused&limit=200", { signal }),
    ]);
    fill(table,
      h("tr", {}, ["Gate", "Enabled", "Updated by", "Updated", "Revision", ""].map((t) => h("th", {}, t))),
      gates.metadata.map((g) =>
        h(
          "tr",
          { dataset: { gate: g["gate-key"], enabled: String(g.enabled) } },
          h("td", {}, g["gate-key"]),
          h(
            "td",
            {},
            h(
              "button",
              {
                type: "button",
                class: `toggle ${g.enabled ? "on" : "off"}`,
                title: "toggle",
                onclick: () => write(() => api(`${GATES}/${encodeURIComponent(g["gate-key"])}`, { method: "PUT", body: { enabled: !g.enabled } }), `${g["gate-key"]} ${g.enabled ? "disabled" : "enabled"}`),
              },
              g.enabled ? "on" : "off",
            ),
          ),
          h("td", {}, g["updated-by"]),
          h("td", {}, time(g["updated-at"])),
          h("td", {}, g.revision),
          h(
            "td",
            {},
            h("button", { type: "button", class: "delete", onclick: () => write(() => api(`${GATES}/${encodeURIComponent(g["gate-key"])}`, { method: "DELETE" }), `${g["gate-key"]} unset`) }, "unset"),
          ),
        ),
      ),
      gates.metadata.length ? null : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no gate set")),
    );
    const lastRefusal = {};
    for (const e of refused.items) lastRefusal[e.cluster] = e;
    fill(clusterTable,
      h("tr", {}, ["Cluster", "Status", "Gates", "Last refusal"].map((t) => h("th", {}, t))),
      clusters.items.slice(0, 200).map((c) =>
        h(
          "tr",
          { dataset: { cluster: c.name, gates: gateState(c.gates) } },
          h("td", {}, c.name),
          h("td", {}, h("span", { class: `badge ${statusOf(c)}` }, statusOf(c))),
          h("td", { class: "gates" }, gateText(c)),
          h("td", {}, lastRefusal[c.name] ? `${time(lastRefusal[c.name].time)} ${lastRefusal[c.name].message}` : "—"),
        ),
      ),
    );
  }

  async function write(action, done) {
    if (await attempt(action, done)) await refresh();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = key.value.trim();
    write(() => api(`${GATES}/${encodeURIComponent(name)}`, { method: "PUT", body: { enabled: enabled.value === "true" } }), `${name} set`).then(() => {
      key.value = "";
    });
  });
  await refresh();
  while (!signal.aborted) {  // the agents' reports come in after a write: show them as they do
    await sleep(3000, signal);
    if (!signal.aborted) await refresh().catch(() => {});
  }
}

/** "in-sync" when the cluster's agent applied the fleet's newest gate snapshot, "behind", or "unknown" (never reported). */
function gateState(gates) {
  if (gates.applied === null || gates.applied === undefined) return "unknown";
  return gates.applied >= gates.current ? "in-sync" : "behind";
}

function gateText(cluster) {
  const { applied, current } = cluster.gates;
  switch (gateState(cluster.gates)) {
    case "in-sync":
      return `in sync (revision ${applied})`;
    case "behind":
      return `behind: revision ${applied} of ${current}${cluster.connected ? "" : " (agent not connected)"}`;
    default:
      return cluster.connected ? "not reported (no local config target)" : "not reported";
  }
}

const EXAMPLE = `apiVersion: fleetsync.io/v1
kind: Work
metadata: {name: example}
spec:
  placement:
    clusterSelector: env=prod   # and/or clusters: [c1]
  manifests:
    - apiVersion: v1
      kind: ConfigMap
      metadata: {name: example, namespace: default}
      data: {color: blue}
`;

/** A work's manifest as "Kind namespace/name" (its index if the spec has no such manifest). */
function describe(manifest, index) {
  if (!manifest) return `manifest ${index}`;
  const meta = manifest.metadata || {};
  return `${manifest.kind} ${meta.namespace ? `${meta.namespace}/` : ""}${meta.name}`;
}

export async function worksView(main, _args, signal) {
  const table = h("table", { id: "works", class: "grid" });
  const detail = h("div", { id: "work-detail" });
  const editor = h("textarea", { id: "work-editor", rows: 16, spellcheck: false });
  editor.value = EXAMPLE;
  const name = h("input", { id: "work-name", placeholder: "name", value: "example" });
  const apply = h("button", { type: "button", id: "work-apply" }, "Apply (PUT)");
  const pager = new Pager(50, () => refresh());
  const pagerSlot = h("div");
  main.append(
    h("div", { class: "toolbar" }, h("h2", {}, "Works")),
    table,
    pagerSlot,
    detail,
    h("h3", {}, "Create or replace a work"),
    h("div", { class: "toolbar" }, name, apply, h("span", { class: "muted" }, "YAML or JSON; needs an admin token")),
    editor,
  );

  let selected = "";
  function showWork(w) {
    selected = w.metadata.name;
    const rows = w.status.clusters.map((c) =>
      h(
        "tr",
        { dataset: { cluster: c.cluster, state: c.state } },
        h("td", {}, c.cluster),
        h("td", {}, h("span", { class: `badge ${c.state}` }, c.state)),
        h("td", {}, c.observedGeneration ?? "—"),
        h("td", {}, (c.manifests || []).map((m) => h("div", {}, `${describe(w.spec.manifests?.[m.manifest], m.manifest)}: ${m.condition}${m.message ? ` — ${m.message}` : ""}`))),
      ),
    );
    fill(detail,
      h("h3", {}, `Work ${w.metadata.name} (generation ${w.metadata.generation}) per cluster`),
      h("table", { class: "grid small", id: "work-clusters" }, h("tr", {}, ["Cluster", "State", "Observed generation", "Manifests"].map((t) => h("th", {}, t))), rows),
    );
  }

  async function refresh() {
    const works = (await api(WORKS, { signal })).items;
    fill(table,
      h("tr", {}, ["Work", "Generation", "Targeted", "Applied", "Available", "Failed", "Pending", "Updated by", ""].map((t) => h("th", {}, t))),
      pager.slice(works).map((w) =>
        h(
          "tr",
          { dataset: { work: w.metadata.name }, class: "clickable", onclick: () => showWork(w) },
          h("td", {}, w.metadata.name),
          h("td", {}, w.metadata.generation),
          ["targeted", "applied", "available", "failed", "pending"].map((k) => h("td", { class: k }, w.status[k])),
          h("td", {}, w.metadata.annotations?.["fleetsync.io/updated-by"] || ""),
          h(
            "td",
            {},
            h(
              "button",
              {
                type: "button",
                onclick: (event) => {
                  event.stopPropagation();
                  name.value = w.metadata.name;
                  editor.value = yamlDocument({ apiVersion: w.apiVersion, kind: w.kind, metadata: { name: w.metadata.name }, spec: w.spec });
                },
              },
              "edit",
            ),
            h(
              "button",
              {
                type: "button",
                class: "delete",
                onclick: async (event) => {
                  event.stopPropagation();
                  if (await attempt(() => api(`${WORKS}/${encodeURIComponent(w.metadata.name)}`, { method: "DELETE" }), `work ${w.metadata.name} deleted`)) await refresh();
                },
              },
              "delete",
            ),
          ),
        ),
      ),
      works.length ? null : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "no work")),
    );
    fill(pagerSlot, pager.controls());
    const shown = works.find((w) => w.metadata.name === selected);
    if (shown) showWork(shown);
    else fill(detail);
  }

  apply.addEventListener("click", async () => {
    const target = name.value.trim();
    const sent = () => api(`${WORKS}/${encodeURIComponent(target)}`, { method: "PUT", body: editor.value, contentType: "application/yaml" });
    if (await attempt(sent, `work ${target} applied`)) await refresh();
  });
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 3000);
  signal.addEventListener("abort", () => clearInterval(timer));
}
