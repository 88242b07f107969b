// The dashboard: sign-in, the error banner, and a hash router over the views.
import { HubError, api, onFailure, token } from "./api.js";
import { showError } from "./dom.js";
import { clusterView } from "./cluster.js";
import { eventsView } from "./events.js";
import { fleetView } from "./fleet.js";
import { gatesView, worksView } from "./admin.js";
import { graphView } from "./graph.js";

const VIEWS = { fleet: fleetView, cluster: clusterView, events: eventsView, graph: graphView, gates: gatesView, works: worksView };
const $ = (id) => document.getElementById(id);
let current = null; // the AbortController of the view shown

function signIn(message) {
  current?.abort();
  $("view").replaceChildren();
  $("login").hidden = false;
  $("signout").hidden = true;
  if (message) showError(message);
  $("token").focus();
}

function route() {
  if (!token.get()) return signIn();
  current?.abort();
  current = new AbortController();
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const view = VIEWS[name] ? name : "fleet";
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.view === view);
  $("login").hidden = true;
  $("signout").hidden = false;
  const main = $("view");
  main.replaceChildren();
  main.dataset.view = view;
  VIEWS[view](main, rest.map(decodeURIComponent), current.signal).catch((error) => {
    if (!(error instanceof HubError) && !current.signal.aborted && error.name !== "AbortError") showError(String(error));
  });
}

onFailure((error) => {
  $("error").classList.remove("notice");
  if (error.status === 401) {
    token.clear();
    signIn(`The hub refused the token: ${error.message}`);
  } else {
    showError(`${error.status}: ${error.message}`);
  }
});

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  token.set(value, $("remember").checked);
  try {
    await api("/api/v1/clusters"); // the token must be one the hub takes
  } catch {
    return; // onFailure said why
  }
  $("token").value = "";
  showError("");
  route();
});

$("signout").addEventListener("click", () => {
  token.clear();
  signIn("");
});

window.addEventListener("hashchange", () => {
  $("error").classList.remove("notice");
  showError("");
  route();
});
route();
