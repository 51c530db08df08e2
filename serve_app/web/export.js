// The export dialog: POST /v1/video/sessions/{sid}/exports {"formats", "include_images", "scope":
// {"frame_start", "frame_end"}, "merge": {"mode", "groups"}, "object_meta", "auto_propagate_if_incomplete"}
// -> 202 + a job, polled (GET /v1/jobs/{id}) until it succeeded: then a link to the ZIP (export_url).

import { ApiError, report, request } from "./api.js";
import { $, busy } from "./ui.js";

const POLL_MS = 1000;
let session = null;
let objectMeta = [];
let polling = 0; // increments to stop an older poll loop

/** "name: 1, 2" lines -> [{name, obj_ids}] (throws on a malformed line). */
export function parseMergeGroups(text) {
  const groups = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const m = line.match(/^(.+?)\s*:\s*([\d,\s]+)$/);
    if (!m) throw new Error(`merge group "${line}": write it as "name: 1, 2"`);
    groups.push({ name: m[1].trim(), obj_ids: m[2].split(/[,\s]+/).filter(Boolean).map(Number) });
  }
  return groups;
}

export function openExport(view, meta) {
  session = view;
  objectMeta = meta;
  $("export-end").placeholder = String(view.num_frames - 1);
  $("export-end").max = String(view.num_frames - 1);
  $("export-start").max = String(view.num_frames - 1);
  $("export-status").textContent = "";
  $("export-link").hidden = true;
  $("export-progress").hidden = true;
  $("export-submit").disabled = false;
  $("export-dialog").showModal();
}

async function submit() {
  const formats = [...document.querySelectorAll('#export-form input[name="format"]:checked')].map((i) => i.value);
  if (!formats.length) {
    $("export-status").textContent = "choose at least one format";
    return;
  }
  await busy(async () => {
    const groups = parseMergeGroups($("export-merge").value);
    const scope = { frame_start: Number($("export-start").value) || 0 };
    if ($("export-end").value !== "") scope.frame_end = Number($("export-end").value);
    const body = { formats, include_images: $("export-images").checked, scope, object_meta: objectMeta,
      merge: groups.length ? { mode: "group", groups } : { mode: "none" },
      auto_propagate_if_incomplete: $("export-autoprop").checked };
    $("export-submit").disabled = true;
    $("export-link").hidden = true;
    try {
      const job = await request(`v1/video/sessions/${session.session_id}/exports`, { json: body });
      $("export-status").textContent = `job ${job.job_id}: ${job.status}`;
      await follow(job.job_id);
    } finally {
      $("export-submit").disabled = false;
    }
  });
}

/** Poll a job until it ends; show its progress, then the download link or its error. */
async function follow(jobId) {
  const mine = ++polling;
  const bar = $("export-progress");
  for (;;) {
    const job = await request(`v1/jobs/${jobId}`);
    if (mine !== polling) return;
    if (job.progress && job.progress.total) {
      bar.hidden = false;
      bar.max = job.progress.total;
      bar.value = job.progress.done;
    }
    $("export-status").textContent = `job ${job.job_id}: ${job.status}` +
      (job.progress ? ` (${job.progress.done}/${job.progress.total} ${job.progress.unit})` : "");
    if (job.status === "succeeded") {
      bar.hidden = true;
      const link = $("export-link");
      link.href = job.export_url;
      link.download = `export-${session.session_id}.zip`;
      link.hidden = false;
      return;
    }
    if (job.status === "failed" || job.status === "cancelled") {
      bar.hidden = true;
      const err = job.error || { code: job.status, message: `the export job ${job.status}` };
      report(new ApiError(0, err.code, `export job ${job.job_id}: ${err.message}`, ""));
      return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

export function initExport() {
  $("export-submit").addEventListener("click", submit);
  $("export-dialog").addEventListener("close", () => { polling += 1; });
}
