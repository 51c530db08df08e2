// The Image tab's stage: the loaded image, its upload (POST /v1/images: the id that concepts, clicks and
// automatic masks use, and the cached embedding that makes clicks fast), the canvas and the instance list.
// Each mode (concept.js, click.js, auto.js) owns its own groups of instances; the stage draws the current
// mode's. Coordinates: canvas pixels = pixels of the original image (after EXIF rotation), boxes xyxy.

import { request } from "./api.js";
import { drawScene, downloadCanvas } from "./draw.js";
import { $, busy, el, fmtScore } from "./ui.js";

export const stage = {
  file: null,
  bitmap: null, // ImageBitmap of the file as the browser decoded it (EXIF orientation applied)
  imageId: null, // sha256 from POST /v1/images
  width: 0,
  height: 0,
  upload: null, // Promise of the upload answer
  mode: "concept",
  groups: { concept: [], click: [], auto: [] }, // per mode: [{title, color, items: [item]}]
  overlay: { points: [], draft: null }, // click mode's marks
  hover: null, // the item under the mouse in the list
};
// item: {key, label, score, color, box, layer (draw.js maskLayer) | null, hidden, onSelect?, active?}

const listeners = new Set();
/** `fn(stage)` after a new image is loaded (modes reset their state). */
export function onImageLoaded(fn) {
  listeners.add(fn);
}

export function currentItems() {
  return stage.groups[stage.mode].flatMap((g) => g.items);
}

/** Redraw the canvas from the stage's state. */
export function render() {
  const canvas = $("image-canvas");
  if (!stage.width) return;
  const items = currentItems().map((it) => ({ ...it, highlight: stage.hover === it.key || it.active }));
  const marks = stage.mode === "click" ? stage.overlay : {};
  drawScene(canvas, stage.bitmap, items, { ...marks, boxes: $("show-boxes").checked });
}

/** Replace a mode's groups and redraw (and relist, when it is the current mode). */
export function setGroups(mode, groups) {
  stage.groups[mode] = groups;
  if (mode === stage.mode) {
    renderList();
    render();
  }
}

export function setMode(mode) {
  stage.mode = mode;
  for (const m of ["concept", "click", "auto"]) $(`panel-${m}`).hidden = m !== mode;
  $(`mode-${mode}`).checked = true;
  stage.hover = null;
  renderList();
  render();
}

/** The instance list of the current mode: per group a title, per item show/hide, hover highlight. */
export function renderList() {
  const list = $("instance-list");
  list.replaceChildren();
  let count = 0;
  for (const group of stage.groups[stage.mode]) {
    list.append(el("div", { class: "group-title" },
      group.color ? el("span", { class: "swatch", dataset: { color: String(group.color) } }) : null,
      el("span", {}, group.title), el("span", { class: "muted" }, `${group.items.length}`)));
    for (const it of group.items) {
      count += 1;
      const row = el("div", { class: `item${it.active ? " active" : ""}`, dataset: { key: it.key } },
        el("input", { type: "checkbox", checked: !it.hidden, title: "show/hide", class: "toggle",
          onchange: (e) => { it.hidden = !e.target.checked; render(); } }),
        el("span", { class: "swatch" }),
        el("span", { class: "grow", title: it.label }, it.label),
        el("span", { class: "score" }, fmtScore(it.score)));
      row.querySelector(".swatch").style.background = `rgb(${it.color.join(",")})`;
      row.addEventListener("mouseenter", () => { stage.hover = it.key; render(); });
      row.addEventListener("mouseleave", () => { stage.hover = null; render(); });
      if (it.onSelect) row.addEventListener("click", (e) => { if (e.target.type !== "checkbox") it.onSelect(); });
      list.append(row);
    }
  }
  for (const sw of list.querySelectorAll(".group-title .swatch")) {
    sw.style.background = `rgb(${sw.dataset.color})`;
  }
  $("instance-count").textContent = count ? `(${count})` : "";
}

/** Load a file: decode it for display and upload it (POST /v1/images, embedding precomputed). */
export async function loadImage(file) {
  stage.file = file;
  stage.imageId = null;
  $("image-info").textContent = `${file.name} · uploading…`;
  const form = new FormData();
  form.append("file", file, file.name || "image");
  stage.upload = request("v1/images", { body: form });
  const uploaded = await busy(async () => {
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      bitmap = null; // the server's answer says what is wrong with it (or it is a format only the server reads)
    }
    const answer = await stage.upload;
    return { bitmap, answer };
  });
  if (!uploaded) {
    $("image-info").textContent = `${file.name}: not accepted (see the error)`;
    return;
  }
  const { bitmap, answer } = uploaded;
  stage.bitmap = bitmap;
  stage.imageId = answer.image_id;
  stage.width = answer.width;
  stage.height = answer.height;
  const canvas = $("image-canvas");
  canvas.width = answer.width;
  canvas.height = answer.height;
  canvas.style.setProperty("--ar", String(answer.width / answer.height));
  canvas.hidden = false;
  $("image-empty").hidden = true;
  $("image-info").textContent = `${file.name} · ${answer.width}×${answer.height} · ` +
    `${answer.precomputed ? "embedding cached" : "embedding on first click"}` +
    `${bitmap ? "" : " · this browser cannot display the format"}`;
  canvas.dataset.imageId = answer.image_id;
  for (const fn of listeners) fn(stage);
  for (const m of Object.keys(stage.groups)) stage.groups[m] = [];
  renderList();
  render();
}

/** The uploaded image's id (waits for the upload); null when there is none. */
export async function imageId() {
  if (!stage.upload) return null;
  await stage.upload;
  return stage.imageId;
}

export function downloadOverlay() {
  if (!stage.width) return;
  const base = (stage.file && stage.file.name ? stage.file.name.replace(/\.[^.]+$/, "") : "image");
  downloadCanvas($("image-canvas"), `${base}-${stage.mode}-overlay.png`);
}
