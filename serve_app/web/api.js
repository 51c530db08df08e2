// The page's only way to the service: the public HTTP API, relative to where the page is served.
//
// The API base is the folder above /ui/ (so an app served under a route prefix such as /auth/ works).
// The API key typed into the page is kept in localStorage and sent as the X-API-Key header; it is never put
// in a URL. Every failed call throws an ApiError carrying the standard error body's code, message and
// request_id ({"error": {"code", "message", "request_id"}}).

export const API_BASE = new URL("..", window.location.href);
const KEY_STORAGE = "sam3.apiKey";

/** An API failure: HTTP status (0 = no answer), error code, message and the request id to quote. */
export class ApiError extends Error {
  constructor(status, code, message, requestId, extra = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.requestId = requestId || "";
    this.extra = extra;
  }
}

export function getApiKey() {
  return window.localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) window.localStorage.setItem(KEY_STORAGE, key);
  else window.localStorage.removeItem(KEY_STORAGE);
}

/** Absolute URL of an API path such as "v1/pcs/image" (no leading slash: relative to API_BASE). */
export function apiUrl(path, query) {
  const url = new URL(path.replace(/^\//, ""), API_BASE);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  return url;
}

function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = getApiKey();
  if (key) headers.set("X-API-Key", key);
  return headers;
}

const listeners = new Set();
/** Call `fn(error)` for every ApiError thrown by `request` (the page's error panel listens). */
export function onApiError(fn) {
  listeners.add(fn);
}

/** Turn a failed Response into an ApiError (the JSON error body when there is one). */
export async function errorFrom(response) {
  const headerId = response.headers.get("x-request-id") || "";
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const err = body && body.error;
  if (err && err.code) {
    return new ApiError(response.status, err.code, err.message || "", err.request_id || headerId,
      { limit: err.limit, retryAfter: response.headers.get("retry-after") });
  }
  return new ApiError(response.status, `http_${response.status}`, response.statusText || "request failed", headerId);
}

export function report(error) {
  for (const fn of listeners) fn(error);
}

/**
 * One API call. `opts`: method, query, json (sent as JSON), body (FormData/Blob sent as is), headers, signal,
 * quiet (do not show failures in the error panel), raw (return the Response instead of its JSON).
 */
export async function request(path, opts = {}) {
  const headers = authHeaders(opts.headers);
  let body = opts.body;
  if (opts.json !== undefined) {
    headers.set("Content-Type", "application/json");
    body = JSON.stringify(opts.json);
  }
  let response;
  try {
    response = await fetch(apiUrl(path, opts.query), { method: opts.method || (body ? "POST" : "GET"), headers, body,
      signal: opts.signal, cache: "no-store" });
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    const error = new ApiError(0, "network_error", `the service did not answer (${exc && exc.message})`, "");
    if (!opts.quiet) report(error);
    throw error;
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (!opts.quiet) report(error);
    throw error;
  }
  if (opts.raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** GET an API resource as a Blob (frames: <img> cannot send the API key, so the page fetches them). */
export async function getBlob(path, opts = {}) {
  const response = await request(path, { ...opts, raw: true });
  return response.blob();
}

/**
 * Send a body with upload progress (XMLHttpRequest: fetch has no upload progress). `url` is an API path, or
 * an absolute URL (a presigned PUT: then no API key is sent). `onProgress(loaded, total)`.
 * Resolves with the parsed JSON answer (or null), rejects with an ApiError.
 */
export function upload(url, { method = "POST", body, headers = {}, onProgress, presigned = false } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const target = presigned ? url : apiUrl(url).href;
    xhr.open(method, target);
    const all = presigned ? new Headers(headers) : authHeaders(headers);
    for (const [k, v] of all.entries()) {
      if (["content-length", "host"].includes(k.toLowerCase())) continue; // set by the browser itself
      xhr.setRequestHeader(k, v);
    }
    if (onProgress) xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : 0);
    xhr.onerror = () => {
      const error = new ApiError(0, "network_error", presigned
        ? "the upload to storage failed (network or CORS: the storage must allow this page's origin)"
        : "the service did not answer", "");
      report(error);
      reject(error);
    };
    xhr.onload = () => {
      const text = xhr.responseText || "";
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(text && !presigned ? JSON.parse(text) : null);
        } catch {
          resolve(null);
        }
        return;
      }
      let error;
      try {
        const err = JSON.parse(text).error;
        error = new ApiError(xhr.status, err.code, err.message, err.request_id);
      } catch {
        error = new ApiError(xhr.status, presigned ? "storage_put_failed" : `http_${xhr.status}`,
          text.slice(0, 300) || xhr.statusText, xhr.getResponseHeader("x-request-id") || "");
      }
      report(error);
      reject(error);
    };
    xhr.send(body);
  });
}

/**
 * POST a JSON body and read an NDJSON answer line by line: `onMessage(obj)` for each line as it arrives.
 * Resolves when the stream ends. `signal` aborts it; `quiet`: failures are not shown in the error panel.
 */
export async function streamNdjson(path, json, onMessage, signal, quiet = false) {
  const response = await request(path, { json, signal, raw: true, quiet });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line) onMessage(JSON.parse(line));
    }
  }
  if (buffered.trim()) onMessage(JSON.parse(buffered));
}
