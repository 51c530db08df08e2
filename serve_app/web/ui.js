// Small DOM helpers shared by the page's modules: element lookup/creation, the error panel, the busy flag.

import { ApiError } from "./api.js";

export const $ = (id) => document.getElementById(id);

/** Create an element: el("button", {class: "x", onclick: fn, title: "t"}, "text", child, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

/** Show an error in the error panel: HTTP status, code, message and the request id to quote. */
export function showError(error) {
  const panel = $("error-panel");
  if (error instanceof ApiError) {
    $("error-status").textContent = error.status ? `(HTTP ${error.status})` : "";
    $("error-code").textContent = error.code;
    $("error-message").textContent = error.message;
    $("error-request-id").textContent = error.requestId || "—";
    if (error.status === 401) document.querySelector(".apikey").classList.add("needed");
  } else {
    $("error-status").textContent = "";
    $("error-code").textContent = "client_error";
    $("error-message").textContent = String(error && error.message ? error.message : error);
    $("error-request-id").textContent = "—";
  }
  panel.hidden = false;
}

export function hideError() {
  $("error-panel").hidden = true;
}

let busyCount = 0;
/** Run `fn` with the "working…" indicator on; errors are shown in the panel (and swallowed). */
export async function busy(fn) {
  busyCount += 1;
  $("busy").hidden = false;
  try {
    return await fn();
  } catch (error) {
    if (!(error instanceof ApiError)) showError(error); // ApiErrors were shown by api.js already
    return undefined;
  } finally {
    busyCount -= 1;
    $("busy").hidden = busyCount === 0;
  }
}

/** Wire a range input to its <output> (id + "-out") and return a getter of its number value. */
export function slider(id) {
  const input = $(id);
  const out = $(`${id}-out`);
  const show = () => { out.textContent = Number(input.value).toFixed(2); };
  input.addEventListener("input", show);
  show();
  return () => Number(input.value);
}

/** Make a drop zone: files dropped or chosen are passed to `onFile(file)`. */
export function dropZone(zone, input, onFile) {
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) onFile(input.files[0]);
    input.value = "";
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) onFile(file);
  });
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
}

export function fmtScore(x) {
  return typeof x === "number" ? x.toFixed(2) : "";
}
