// The Jobs tab: GET /v1/jobs (newest first, optional status filter); succeeded jobs' result, overlay and export
// links come from GET /v1/jobs/{id} (presigned URLs, fetched for the shown jobs).

import { request } from "./api.js";
import { $, el } from "./ui.js";

const LINKS = [["result_url", "result"], ["overlay_url", "overlay"], ["export_url", "export ZIP"]];

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export async function refreshJobs() {
  const body = $("jobs-body");
  let answer;
  try {
    answer = await request("v1/jobs", { query: { limit: 30, status: $("jobs-status").value } });
  } catch {
    $("jobs-info").textContent = "could not list jobs (see the error)";
    return;
  }
  $("jobs-info").textContent = `${answer.jobs.length} jobs${answer.next_cursor ? " (newest shown)" : ""}`;
  body.replaceChildren(...answer.jobs.map((job) => {
    const links = el("td", { class: "links" });
    if (job.status === "succeeded") {
      request(`v1/jobs/${job.job_id}`, { quiet: true }).then((full) => {
        for (const [field, label] of LINKS) {
          if (full[field]) links.append(el("a", { href: full[field], target: "_blank", rel: "noopener" }, label));
        }
      }, () => {});
    } else if (job.error) {
      links.append(el("span", { class: "muted", title: job.error.message }, job.error.code));
    }
    const progress = job.progress ? `${job.progress.done}/${job.progress.total} ${job.progress.unit}` : "";
    return el("tr", { dataset: { jobId: job.job_id } },
      el("td", {}, el("code", {}, job.job_id)), el("td", {}, job.kind),
      el("td", { class: `status-${job.status}` }, job.status), el("td", {}, progress),
      el("td", {}, when(job.created_at)), links);
  }));
  if (!answer.jobs.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "no jobs yet")));
}

export function initJobs() {
  $("jobs-refresh").addEventListener("click", refreshJobs);
  $("jobs-status").addEventListener("change", refreshJobs);
}
