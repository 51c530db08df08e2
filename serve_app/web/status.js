// The status bar: GET /readyz (ready | warming_up | scaled_to_zero | failed, with a reason) and
// GET /v1/cluster (local | warming_up | ready | draining | off | failed | unknown), polled every POLL_MS.

import { ApiError, request } from "./api.js";
import { $ } from "./ui.js";

const POLL_MS = 10000;
const CLASS = { ready: "ok", local: "ok", warming_up: "warn", scaled_to_zero: "warn", draining: "warn",
  off: "warn", failed: "bad", unknown: "", unreachable: "bad" };

function show(id, state) {
  const node = $(id);
  node.textContent = state.replaceAll("_", " ");
  node.className = `pill ${CLASS[state] || ""}`;
  node.dataset.state = state;
}

export async function refreshStatus() {
  const reasons = [];
  try {
    // /readyz answers 503 with a JSON state while not ready: read it as data, not as an error
    const response = await fetch(new URL("readyz", new URL("..", window.location.href)), { cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    show("ready-state", body.state || (response.ok ? "ready" : "unknown"));
    if (body.reason) reasons.push(body.reason);
    if (body.storage && body.storage.state === "failed") reasons.push(`storage: ${body.storage.reason}`);
    if (body.jobs && body.jobs.state === "refused") reasons.push(`jobs: ${body.jobs.reason}`);
  } catch {
    show("ready-state", "unreachable");
  }
  try {
    const cluster = await request("v1/cluster", { quiet: true });
    show("cluster-state", cluster.state || "unknown");
    if (cluster.reason && cluster.state !== "local") reasons.push(cluster.reason);
  } catch (error) {
    show("cluster-state", "unknown");
    if (error instanceof ApiError && error.status === 401) reasons.push("an API key is needed (field at the top right)");
  }
  $("status-reason").textContent = reasons.join(" · ");
}

export function startStatus() {
  refreshStatus();
  setInterval(refreshStatus, POLL_MS);
}
