// The console's one way to the server: the public REST API under /v1 with the API key as a
// Bearer header, SSE read through fetch (EventSource cannot send headers), and the PTY
// WebSocket with ?token= (browsers cannot set headers on a WebSocket).

const STORAGE_KEY = "chaser.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function apiKey() {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(STORAGE_KEY, key);
  else sessionStorage.removeItem(STORAGE_KEY);
}

let onUnauthorized = () => {};
export function whenUnauthorized(callback) { onUnauthorized = callback; }

async function errorOf(response) {
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (body && body.code) return new ApiError(response.status, body.code, body.message || "");
  return new ApiError(response.status, "http_" + response.status, response.statusText || "request failed");
}

// fetch() on the API with the stored key (or `key`); throws ApiError for a non-2xx answer.
export async function raw(method, path, {body, json, key, headers = {}, signal} = {}) {
  const init = {method, headers: {...headers, Authorization: `Bearer ${key || apiKey() || ""}`}, signal};
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network_error", `the server did not answer (${error.message})`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (error.status === 401 && !key) onUnauthorized(error);
    throw error;
  }
  return response;
}

export async function call(method, path, options = {}) {
  const response = await raw(method, path, options);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("application/json") ? response.json() : response.text();
}

export const get = (path, options) => call("GET", path, options);
export const post = (path, json, options = {}) => call("POST", path, {...options, json});
export const put = (path, json, options = {}) => call("PUT", path, {...options, json});
export const del = (path, options) => call("DELETE", path, options);

export const enc = encodeURIComponent;

// Server-Sent Events of `path`: calls onEvent(name, data) per event until the stream ends
// (or `signal` aborts it).
export async function stream(path, onEvent, {signal} = {}) {
  const response = await raw("GET", path, {headers: {Accept: "text/event-stream"}, signal});
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = {name: "message", data: []};
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if (event.data.length) onEvent(event.name, event.data.join("\n"));
        event = {name: "message", data: []};
      } else if (line.startsWith(":")) {
        continue;
      } else {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "event") event.name = text;
        else if (name === "data") event.data.push(text);
      }
    }
  }
}

export function ptyUrl(sessionId, {mode = "human", rows, cols}) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({mode, rows: String(rows), cols: String(cols), token: apiKey() || ""});
  return `${scheme}//${location.host}/v1/sessions/${enc(sessionId)}/pty?${query}`;
}
