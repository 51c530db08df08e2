// The Video tab: upload (presigned PUT to storage, or multipart to the API, both with a progress bar),
// a session (POST /v1/video/sessions), playback of its frames (GET …/frames/{i}: JPEG, fetched with the API
// key and drawn on a canvas) with the stored masks (GET …/masks), text and click prompts on the current frame
// (POST …/prompts), propagation streamed as NDJSON (POST …/propagate) drawn as frames arrive, the object list
// (colour, class/instance names used by exports, hide, remove), reset, and the export dialog (export.js).
// Coordinates: canvas pixels = pixels of the frame as displayed; boxes xyxy; frame indices 0-based.

import { ApiError, report, request, streamNdjson, upload } from "./api.js";
import { colorOf, drawScene, eventToImage, maskLayer } from "./draw.js";
import { openExport } from "./export.js";
import { refreshLibrary } from "./library.js";
import { $, busy, el, fmtScore, hideError } from "./ui.js";

const PRESIGNED_ABOVE = 8 * 1024 * 1024; // "auto" upload mode: larger files go straight to storage
const FRAME_CACHE = 240; // decoded frames kept
const MASK_CHUNK = 64; // frames of stored masks fetched per GET …/masks

export const video = {
  session: null, // SessionView: session_id, num_frames, fps, width, height, video_id
  frame: 0,
  masks: new Map(), // frame index -> [{id, score, box, area, mask}]
  layers: new Map(), // `${frame}:${id}` -> maskLayer
  meta: new Map(), // obj id -> {className, instanceName, hidden}
  points: new Map(), // frame index -> [{x, y, label, obj}]
  active: null, // obj id the next click refines; null = a new object
  frames: new Map(), // frame index -> ImageBitmap
  fetching: new Map(), // frame index -> Promise<ImageBitmap>
  maskRanges: new Set(), // chunk starts already fetched
  playing: false,
  propagation: null, // AbortController of the running propagation
};

const sid = () => video.session.session_id;
const path = (rest = "") => `v1/video/sessions/${sid()}${rest}`;

/** Call `fn` again while the session's actor is still starting (409 session_starting + Retry-After). */
async function whileStarting(fn, timeoutMs = 120000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn(true);
    } catch (error) {
      if (!(error instanceof ApiError) || error.code !== "session_starting" || Date.now() > deadline) {
        if (error instanceof ApiError) report(error);
        throw error;
      }
      const wait = Math.min(5, Number(error.extra.retryAfter) || 1);
      $("propagate-status").textContent = "the session's model is starting…";
      await new Promise((r) => setTimeout(r, wait * 1000));
    }
  }
}

// -- upload and session -----------------------------------------------------------------------------------

function progress(loaded, total) {
  const bar = $("video-progress");
  bar.hidden = false;
  bar.max = total || 1;
  bar.value = loaded;
  $("video-upload-status").textContent = total ? `uploading ${(100 * loaded / total).toFixed(0)} %` : "uploading…";
}

/** Upload a video file and open a session on it (and add it to the media library). */
export async function uploadVideo(file) {
  hideError();
  const mode = $("video-upload-mode").value;
  const maxFrames = Number($("video-max-frames").value) || null;
  const viaStorage = mode === "presigned" || (mode === "auto" && file.size > PRESIGNED_ABOVE);
  const type = file.type || "video/mp4";
  await busy(async () => {
    let view;
    try {
      if (viaStorage) {
        const up = await request("v1/uploads", { json: { content_type: type, content_length: file.size } });
        await upload(up.url, { method: up.method || "PUT", body: file, headers: up.headers, presigned: true,
          onProgress: progress });
        $("video-upload-status").textContent = "uploaded; decoding frames…";
        view = await request("v1/video/sessions", { json: { video: { upload_id: up.upload_id },
          ...(maxFrames ? { max_frames: maxFrames } : {}) } });
      } else {
        const form = new FormData();
        form.append("video", file, file.name || "video.mp4");
        if (maxFrames) form.append("max_frames", String(maxFrames));
        view = await upload("v1/video/sessions", { body: form, onProgress: progress });
      }
    } catch (error) {
      $("video-upload-status").textContent = "upload failed (see the error)";
      throw error;
    } finally {
      $("video-progress").hidden = true;
    }
    $("video-upload-status").textContent = `${file.name}: ${view.num_frames} frames at ${view.fps} fps`;
    nameInLibrary(view.video_id, file.name).then(refreshLibrary, () => {});
    await openSession(view);
  });
}

/** Keep the video in the media library under its file name: POST /v1/videos registers it (a session create
 * may have registered it already, under the default name "video-{id[:12]}": then it is renamed). */
async function nameInLibrary(videoId, fileName) {
  const name = (fileName || "").trim().slice(0, 128);
  const entry = await request("v1/videos", { json: { video_id: videoId, ...(name ? { name } : {}) }, quiet: true });
  if (name && entry.name !== name && entry.name === `video-${videoId.slice(0, 12)}`) {
    await request(`v1/videos/${videoId}`, { method: "PATCH", json: { name }, quiet: true });
  }
}

/** Show a session: frames, stored masks, controls. `view` is a SessionView. */
export async function openSession(view) {
  stopPropagation();
  video.playing = false;
  let current = view;
  while (current.state === "ingesting") { // decoding in the background: wait for it
    await new Promise((r) => setTimeout(r, 1000));
    current = await request(`v1/video/sessions/${view.session_id}`);
  }
  video.session = current;
  video.frame = 0;
  for (const m of [video.masks, video.layers, video.points, video.frames, video.fetching]) m.clear();
  video.maskRanges.clear();
  video.active = null;
  video.meta = loadMeta();
  const canvas = $("video-canvas");
  canvas.width = current.width;
  canvas.height = current.height;
  canvas.style.setProperty("--ar", String(current.width / current.height));
  canvas.hidden = false;
  canvas.dataset.sessionId = current.session_id;
  $("video-empty").hidden = true;
  $("player").hidden = false;
  $("video-controls").hidden = false;
  const scrub = $("video-scrubber");
  scrub.max = String(Math.max(0, current.num_frames - 1));
  scrub.value = "0";
  $("session-info").textContent = `session ${current.session_id} · ${current.num_frames} frames · ` +
    `${current.width}×${current.height} · ${current.fps} fps`;
  $("propagate-status").textContent = "";
  await showFrame(0);
  renderObjects();
}

function closeSession() {
  stopPropagation();
  video.playing = false;
  video.session = null;
  $("video-canvas").hidden = true;
  $("player").hidden = true;
  $("video-controls").hidden = true;
  $("video-empty").hidden = false;
}

// -- frames and masks -------------------------------------------------------------------------------------

function frameBitmap(i) {
  if (video.frames.has(i)) return Promise.resolve(video.frames.get(i));
  if (video.fetching.has(i)) return video.fetching.get(i);
  const session = video.session;
  const p = request(path(`/frames/${i}`), { raw: true })
    .then((r) => r.blob())
    .then((blob) => createImageBitmap(blob))
    .then((bitmap) => {
      if (video.session !== session) return bitmap;
      video.frames.set(i, bitmap);
      if (video.frames.size > FRAME_CACHE) {
        const [oldest] = video.frames.keys();
        video.frames.get(oldest).close();
        video.frames.delete(oldest);
      }
      return bitmap;
    })
    .finally(() => video.fetching.delete(i));
  video.fetching.set(i, p);
  return p;
}

/** Stored masks of the chunk holding frame `i` (once per chunk; propagation and prompts fill in the rest). */
async function loadMasks(i) {
  const start = Math.floor(i / MASK_CHUNK) * MASK_CHUNK;
  if (video.maskRanges.has(start)) return;
  video.maskRanges.add(start);
  const end = Math.min(start + MASK_CHUNK, video.session.num_frames) - 1;
  try {
    const answer = await request(path("/masks"), { query: { frame_start: start, frame_end: end }, quiet: true });
    for (const f of answer.frames) if (!video.masks.has(f.frame_index)) setFrameMasks(f.frame_index, f.objects);
  } catch {
    video.maskRanges.delete(start);
  }
}

function setFrameMasks(i, objects) {
  video.masks.set(i, objects);
  for (const key of [...video.layers.keys()]) if (key.startsWith(`${i}:`)) video.layers.delete(key);
  for (const o of objects) if (!video.meta.has(o.id)) video.meta.set(o.id, { className: "", instanceName: "", hidden: false });
}

function layerOf(i, obj) {
  const key = `${i}:${obj.id}`;
  if (!video.layers.has(key)) video.layers.set(key, maskLayer(obj.mask, colorOf(obj.id)));
  return video.layers.get(key);
}

let drawToken = 0;
/** Show frame `i` with its masks (the last call wins when frames arrive out of order). */
export async function showFrame(i) {
  if (!video.session) return;
  const n = video.session.num_frames;
  const index = Math.max(0, Math.min(n - 1, i));
  video.frame = index;
  $("video-scrubber").value = String(index);
  $("video-frame-label").textContent = `${index + 1} / ${n}`;
  const token = ++drawToken;
  loadMasks(index).then(() => { if (token === drawToken) draw(); });
  let bitmap;
  try {
    bitmap = await frameBitmap(index);
  } catch {
    return;
  }
  if (token !== drawToken) return;
  video.bitmap = bitmap;
  draw();
  for (let k = 1; k <= 3; k += 1) if (index + k < n) frameBitmap(index + k).catch(() => {}); // prefetch
}

let draftBox = null;
function draw() {
  const canvas = $("video-canvas");
  const i = video.frame;
  const objects = video.masks.get(i) || [];
  const items = objects.map((o) => {
    const meta = video.meta.get(o.id) || {};
    return { layer: layerOf(i, o), color: colorOf(o.id), box: o.box, label: objectLabel(o.id),
      hidden: meta.hidden, highlight: o.id === video.active };
  });
  drawScene(canvas, video.bitmap || null, items,
    { points: video.points.get(i) || [], draft: draftBox });
  canvas.dataset.frame = String(i);
  canvas.dataset.objects = String(objects.length);
}

function objectLabel(id) {
  const meta = video.meta.get(id) || {};
  return meta.instanceName || `${meta.className || "object"} ${id}`;
}

async function play() {
  if (!video.session) return;
  video.playing = !video.playing;
  $("video-play").textContent = video.playing ? "❚❚" : "▶";
  const frameMs = 1000 / Math.min(30, video.session.fps || 10);
  while (video.playing) {
    const t0 = performance.now();
    const next = video.frame + 1 >= video.session.num_frames ? 0 : video.frame + 1;
    await showFrame(next);
    await new Promise((r) => setTimeout(r, Math.max(0, frameMs - (performance.now() - t0))));
  }
}

function pause() {
  video.playing = false;
  $("video-play").textContent = "▶";
}

// -- prompts ----------------------------------------------------------------------------------------------

async function sendPrompt(body) {
  if (!video.session) return null;
  return busy(async () => {
    const answer = await whileStarting((quiet) => request(path("/prompts"), { json: body, quiet }));
    setFrameMasks(answer.frame_index, answer.objects);
    $("propagate-status").textContent = `prompt on frame ${answer.frame_index + 1}: ${answer.objects.length} objects ` +
      "(propagate to track them through the video)";
    return answer;
  });
}

async function detectText() {
  const text = $("video-text").value.trim();
  if (!text) return;
  pause();
  const answer = await sendPrompt({ frame_index: video.frame, text });
  if (!answer) return;
  for (const id of answer.prompt_to_obj_ids[text] || answer.objects.map((o) => o.id)) {
    const meta = video.meta.get(id) || { instanceName: "", hidden: false };
    video.meta.set(id, { ...meta, className: meta.className || text });
  }
  saveMeta();
  renderObjects();
  draw();
}

async function clickPrompt(obj) {
  pause();
  const frame = video.frame;
  const body = { frame_index: frame, objects: [{ ...(video.active !== null ? { obj_id: video.active } : {}), ...obj }] };
  const answer = await sendPrompt(body);
  if (!answer) return;
  const id = answer.prompted_obj_ids[0];
  if (id !== undefined) {
    video.active = id;
    const pts = video.points.get(frame) || [];
    for (const p of pts) if (p.obj === null) p.obj = id;
  }
  renderObjects();
  draw();
}

// -- propagation ------------------------------------------------------------------------------------------

function stopPropagation() {
  if (video.propagation) video.propagation.abort();
  video.propagation = null;
}

/** Propagate from the current frame: masks of each frame are drawn as they arrive. */
export async function propagate() {
  if (!video.session || video.propagation) return;
  pause();
  const controller = new AbortController();
  video.propagation = controller;
  const direction = $("propagate-dir").value;
  const bar = $("propagate-progress");
  bar.hidden = false;
  bar.value = 0;
  $("propagate").disabled = true;
  $("propagate-cancel").hidden = false;
  $("propagate-status").textContent = "propagating…";
  let frames = 0;
  let lastDraw = 0;
  try {
    await whileStarting(async (quiet) => {
      await streamNdjson(path("/propagate"), { direction, start_frame_index: video.frame }, (msg) => {
          if (msg.type === "frame") {
            frames += 1;
            setFrameMasks(msg.frame_index, msg.objects);
            if (msg.progress) { bar.max = msg.progress.total || 1; bar.value = msg.progress.done; }
            $("propagate-status").textContent = `frame ${msg.frame_index + 1}: ${frames} frames tracked`;
            const now = performance.now();
            if (now - lastDraw > 80) { lastDraw = now; showFrame(msg.frame_index); }
          } else if (msg.type === "error") {
            const e = msg.error || {};
            report(new ApiError(0, e.code || "propagation_error", e.message || "propagation failed", e.request_id));
          } else if (msg.type === "cancelled") {
            $("propagate-status").textContent = `stopped after ${frames} frames (a newer request took over)`;
          } else if (msg.type === "done") {
            $("propagate-status").textContent = `done: ${frames} frames tracked`;
            $("video-canvas").dataset.propagated = String(frames);
          }
      }, controller.signal, quiet);
    });
  } catch (error) {
    if (error && error.name === "AbortError") $("propagate-status").textContent = `stopped after ${frames} frames`;
  } finally {
    if (video.propagation === controller) video.propagation = null;
    bar.hidden = true;
    $("propagate").disabled = false;
    $("propagate-cancel").hidden = true;
    renderObjects();
    draw();
  }
}

// -- objects ----------------------------------------------------------------------------------------------

function metaKey() {
  return `sam3.session.${sid()}.objects`;
}

function loadMeta() {
  try {
    const raw = JSON.parse(window.localStorage.getItem(`sam3.session.${video.session.session_id}.objects`) || "{}");
    return new Map(Object.entries(raw).map(([k, v]) => [Number(k), v]));
  } catch {
    return new Map();
  }
}

function saveMeta() {
  window.localStorage.setItem(metaKey(), JSON.stringify(Object.fromEntries(video.meta)));
}

/** Every object seen in any frame, by id. */
function objectIds() {
  const ids = new Set();
  for (const objects of video.masks.values()) for (const o of objects) ids.add(o.id);
  return [...ids].sort((a, b) => a - b);
}

export function objectMeta() {
  return objectIds().map((id) => {
    const meta = video.meta.get(id) || {};
    return { obj_id: id, ...(meta.className ? { class_name: meta.className } : {}),
      ...(meta.instanceName ? { instance_name: meta.instanceName } : {}) };
  });
}

function renderObjects() {
  const list = $("video-objects");
  list.replaceChildren();
  for (const id of objectIds()) {
    const meta = video.meta.get(id) || { className: "", instanceName: "", hidden: false };
    video.meta.set(id, meta);
    const here = (video.masks.get(video.frame) || []).find((o) => o.id === id);
    const row = el("div", { class: `item${id === video.active ? " active" : ""}`, dataset: { objId: String(id) } },
      el("input", { type: "checkbox", checked: !meta.hidden, title: "show/hide",
        onchange: (e) => { meta.hidden = !e.target.checked; saveMeta(); draw(); } }),
      el("span", { class: "swatch" }),
      el("b", { title: "select: the next click refines this object",
        onclick: () => { video.active = id; renderObjects(); draw(); } }, `#${id}`),
      el("input", { type: "text", value: meta.className, placeholder: "class", "aria-label": "class name",
        onchange: (e) => { meta.className = e.target.value.trim(); saveMeta(); draw(); } }),
      el("input", { type: "text", value: meta.instanceName, placeholder: "instance", "aria-label": "instance name",
        onchange: (e) => { meta.instanceName = e.target.value.trim(); saveMeta(); draw(); } }),
      el("span", { class: "score" }, here ? fmtScore(here.score) : ""),
      el("button", { class: "ghost small", title: "remove from every frame", onclick: () => removeObject(id) }, "✕"));
    row.querySelector(".swatch").style.background = `rgb(${colorOf(id).join(",")})`;
    list.append(row);
  }
  if (!list.children.length) list.append(el("div", { class: "muted" }, "none yet: type a text prompt or click the frame"));
}

async function removeObject(id) {
  await busy(async () => {
    await whileStarting((quiet) => request(path(`/objects/${id}`), { method: "DELETE", quiet }));
    for (const [i, objects] of video.masks) video.masks.set(i, objects.filter((o) => o.id !== id));
    for (const [i, pts] of video.points) video.points.set(i, pts.filter((p) => p.obj !== id));
    video.meta.delete(id);
    saveMeta();
    if (video.active === id) video.active = null;
    renderObjects();
    draw();
  });
}

async function resetSession() {
  if (!video.session) return;
  stopPropagation();
  await busy(async () => {
    await whileStarting((quiet) => request(path("/reset"), { method: "POST", quiet }));
    video.masks.clear();
    video.layers.clear();
    video.points.clear();
    video.maskRanges.clear();
    video.active = null;
    video.meta.clear();
    saveMeta();
    renderObjects();
    draw();
  });
}

function newObject() {
  video.active = null;
  renderObjects();
  draw();
}

/** Video tab keys: space play/pause, ←/→ frames, n new object, p propagate, e export. True if handled. */
export function videoKey(e) {
  if (!video.session) return false;
  const k = e.key;
  if (k === " ") play();
  else if (k === "ArrowLeft") { pause(); showFrame(video.frame - 1); }
  else if (k === "ArrowRight") { pause(); showFrame(video.frame + 1); }
  else if (k === "n") newObject();
  else if (k === "p") propagate();
  else if (k === "e") openExport(video.session, objectMeta());
  else return false;
  return true;
}

export function initVideo() {
  const canvas = $("video-canvas");
  const drop = $("video-drop");
  const input = $("video-file");
  input.addEventListener("change", () => { if (input.files[0]) uploadVideo(input.files[0]); input.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) uploadVideo(e.dataTransfer.files[0]);
  });
  $("video-scrubber").addEventListener("input", (e) => { pause(); showFrame(Number(e.target.value)); });
  $("video-play").addEventListener("click", play);
  $("video-detect").addEventListener("click", detectText);
  $("video-text").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); detectText(); } });
  $("video-new-object").addEventListener("click", newObject);
  $("propagate").addEventListener("click", propagate);
  $("propagate-cancel").addEventListener("click", stopPropagation);
  $("video-reset").addEventListener("click", resetSession);
  $("video-close").addEventListener("click", closeSession);
  $("export-open").addEventListener("click", () => { if (video.session) openExport(video.session, objectMeta()); });

  let press = null;
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("mousedown", (e) => {
    if (!video.session) return;
    const [x, y] = eventToImage(canvas, e);
    press = { sx: e.clientX, sy: e.clientY, x, y, negative: e.button === 2 || e.shiftKey };
  });
  canvas.addEventListener("mousemove", (e) => {
    if (!press || Math.hypot(e.clientX - press.sx, e.clientY - press.sy) < 5) return;
    const [x, y] = eventToImage(canvas, e);
    draftBox = [Math.min(press.x, x), Math.min(press.y, y), Math.max(press.x, x), Math.max(press.y, y)];
    draw();
  });
  window.addEventListener("mouseup", (e) => {
    if (!press) return;
    const p = press;
    press = null;
    const box = draftBox;
    draftBox = null;
    if (box && box[2] - box[0] >= 2 && box[3] - box[1] >= 2) {
      clickPrompt({ box: box.map(Math.round) });
    } else if (e.target === canvas) {
      const pts = video.points.get(video.frame) || [];
      pts.push({ x: p.x, y: p.y, label: p.negative ? 0 : 1, obj: video.active });
      video.points.set(video.frame, pts);
      draw();
      clickPrompt({ points: [[Math.round(p.x), Math.round(p.y)]], point_labels: [p.negative ? 0 : 1] });
    } else {
      draw();
    }
  });
}
