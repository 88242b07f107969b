// Small DOM and formatting helpers (no framework).

/** An element: h("td", {class: "x", onclick: f}, "text", child, ...). Strings are text, never HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

/** "3s ago", "5m ago" for a Unix time in seconds; "never" for 0. */
export function ago(seconds) {
  if (!seconds) return "never";
  const d = Math.max(0, Date.now() / 1000 - seconds);
  if (d < 60) return `${Math.round(d)}s ago`;
  if (d < 3600) return `${Math.round(d / 60)}m ago`;
  if (d < 86400) return `${Math.round(d / 3600)}h ago`;
  return `${Math.round(d / 86400)}d ago`;
}

export function time(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

/** "v1/Pod" -> "Pod", "discovery.k8s.io/v1/EndpointSlice" -> "EndpointSlice". */
export function kindOf(gvk) {
  return gvk.split("/").pop();
}

/** A JSON value as YAML (for showing objects; strings quoted when YAML would read them otherwise). */
export function toYaml(value, indent = "") {
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return value.map((item) => `\n${indent}- ${toYaml(item, indent + "  ").replace(/^\n\s*/, "")}`).join("");
  }
  if (value && typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) return "{}";
    return keys
      .map((key) => {
        const item = value[key];
        const nested = item && typeof item === "object" && (Array.isArray(item) ? item.length : Object.keys(item).length);
        return `\n${indent}${scalar(key)}:${nested ? "" : " "}${toYaml(item, indent + "  ")}`;
      })
      .join("");
  }
  return scalar(value);
}

function scalar(value) {
  if (typeof value !== "string") return JSON.stringify(value);
  if (value === "" || /^[\s\-?:,[\]{}#&*!|>'"%@`]|[:#]\s|\s$|\n/.test(value) || /^(true|false|null|yes|no|on|off|~|[-+.\d].*)$/i.test(value)) {
    return JSON.stringify(value);
  }
  return value;
}

export function yamlDocument(value) {
  return toYaml(value).replace(/^\n/, "") + "\n";
}

/** A pager over rows: page size, current page, "1–50 of 1000" and prev / next buttons. */
export class Pager {
  constructor(size, onChange) {
    this.size = size;
    this.page = 0;
    this.onChange = onChange;
  }

  slice(rows) {
    const pages = Math.max(1, Math.ceil(rows.length / this.size));
    this.page = Math.min(this.page, pages - 1);
    this.total = rows.length;
    return rows.slice(this.page * this.size, (this.page + 1) * this.size);
  }

  controls() {
    const first = this.total ? this.page * this.size + 1 : 0;
    const last = Math.min(this.total, (this.page + 1) * this.size);
    const go = (page) => () => {
      this.page = page;
      this.onChange();
    };
    return h(
      "div",
      { class: "pager" },
      h("button", { type: "button", class: "prev", disabled: this.page === 0, onclick: go(this.page - 1) }, "‹ prev"),
      h("span", { class: "range" }, `${first}–${last} of ${this.total}`),
      h("button", { type: "button", class: "next", disabled: last >= this.total, onclick: go(this.page + 1) }, "next ›"),
    );
  }
}

/** The banner under the header: the hub's message when it refuses or fails ("" hides it). */
export function showError(message) {
  const banner = document.getElementById("error");
  banner.classList.remove("notice");
  banner.textContent = message;
  banner.hidden = !message;
}

/** What a view did (a gate set, a work applied), in the same place. */
export function showNotice(message) {
  showError(message);
  document.getElementById("error").classList.add("notice");
}

/** The header's live marker: whether the view's stream is connected. */
export function setLive(on) {
  const marker = document.getElementById("live");
  marker.className = on ? "on" : "off";
  marker.textContent = on ? "● live" : "○ reconnecting";
}

/** el.replaceChildren with h()'s children rules (nested arrays flattened; null, undefined and false left out). */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}
