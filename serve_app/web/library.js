// The media library (GET /v1/videos, newest first): reopen a stored video as a new session
// (POST /v1/video/sessions {"video": {"video_id"}}), or delete it (DELETE /v1/videos/{id}).

import { request } from "./api.js";
import { $, busy, el } from "./ui.js";
import { openSession } from "./video.js";

function fmtBytes(n) {
  if (n > 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(n / 1e3))} kB`;
}

async function openVideo(entry) {
  await busy(async () => {
    const maxFrames = Number($("video-max-frames").value) || null;
    const view = await request("v1/video/sessions", { json: { video: { video_id: entry.video_id },
      ...(maxFrames ? { max_frames: maxFrames } : {}) } });
    $("video-upload-status").textContent = `${entry.name}: ${view.num_frames} frames at ${view.fps} fps`;
    await openSession(view);
  });
}

async function deleteVideo(entry) {
  if (!window.confirm(`Delete "${entry.name}" from the library?`)) return;
  await busy(async () => {
    await request(`v1/videos/${entry.video_id}`, { method: "DELETE" });
    await refreshLibrary();
  });
}

export async function refreshLibrary() {
  const list = $("library-list");
  let answer;
  try {
    answer = await request("v1/videos", { query: { limit: 50 }, quiet: true });
  } catch (error) {
    list.replaceChildren(el("div", { class: "muted" }, `library unavailable: ${error.code || error.message}`));
    return;
  }
  list.replaceChildren(...answer.videos.map((v) => el("div", { class: "item", dataset: { videoId: v.video_id } },
    el("span", { class: "grow", title: `${v.video_id}\n${v.created_at}` }, v.name),
    el("span", { class: "muted" }, `${v.duration_s.toFixed(1)} s · ${v.width}×${v.height} · ${fmtBytes(v.size_bytes)}`),
    el("button", { class: "small open", onclick: () => openVideo(v) }, "Open"),
    el("button", { class: "ghost small", title: "delete", onclick: () => deleteVideo(v) }, "✕"))));
  if (!answer.videos.length) list.append(el("div", { class: "muted" }, "no stored videos yet"));
}

export function initLibrary() {
  $("library-refresh").addEventListener("click", (e) => { e.preventDefault(); refreshLibrary(); });
}
