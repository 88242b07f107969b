// The hub's API as the dashboard uses it: the token, JSON calls, and line-delimited streams.
const KEY = "fleetsync.token";

export const token = {
  get: () => sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "",
  set(value, remember) {
    sessionStorage.setItem(KEY, value);
    if (remember) localStorage.setItem(KEY, value);
  },
  clear() {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
  },
};

/** A refusal or failure of the hub, with its message (a Kubernetes Status's, or microcluster's envelope's). */
export class HubError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const listeners = new Set();
/** Called with every HubError an API call ends with (the page shows it; a 401 asks for a token again). */
export function onFailure(listener) {
  listeners.add(listener);
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body.message || body.error || message;
  } catch {
    // not JSON: the status line says enough
  }
  const error = new HubError(response.status, message);
  for (const listener of listeners) listener(error);
  return error;
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${token.get()}`, ...extra };
}

/** A call of the hub's API: the decoded JSON (or text) answer, or a HubError. */
export async function api(path, { method = "GET", body, contentType = "application/json", signal } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": contentType }), signal };
  if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** Read a stream of JSON lines (a watch) until it ends: onItem(each). A HubError if the hub refuses it. */
export async function stream(path, onItem, signal) {
  const response = await fetch(path, { headers: headers(), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (line) onItem(JSON.parse(line));
    }
  }
}

/** Keep a stream open until signal aborts: reconnect (after a pause) when it ends or breaks;
 * path() is asked each time, so that it resumes where the last one stopped. A refusal stops it. */
export async function follow(path, onItem, signal, onState = () => {}) {
  let pause = 500;
  while (!signal.aborted) {
    try {
      onState(true);
      await stream(path(), (item) => {
        pause = 500;
        onItem(item);
      }, signal);
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof HubError && (error.status === 401 || error.status === 403)) {
        onState(false);
        return;
      }
    }
    onState(false);
    await sleep(pause, signal);
    pause = Math.min(pause * 2, 10000);
  }
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
