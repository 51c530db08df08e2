// Click mode: positive/negative clicks and box drags for one or several objects -> POST /v1/pvs/image
// {"image_id", "objects": [{"points", "point_labels", "box", "mask_input"}], "multimask_output"}.
// Each answer's `mask_input` is sent back with the object's next click, so a click refines the mask instead
// of starting over; with multimask the three candidates are shown to pick from. Points and boxes are pixels
// of the original image (canvas pixels), boxes xyxy.

import { request } from "./api.js";
import { colorOf, drawScene, eventToImage, maskLayer } from "./draw.js";
import { imageId, onImageLoaded, render, setGroups, stage } from "./image.js";
import { $, busy, el, fmtScore } from "./ui.js";

const DRAG_PX = 5; // screen pixels a press must move to be a box drag rather than a click
let objects = []; // [{points: [[x, y, label]], box, maskInput, history: [maskInput before each change], answer, pick}]
let active = -1;
let seq = 0; // answers to older requests are dropped

function newObject() {
  objects.push({ points: [], box: null, maskInput: null, history: [], answer: null, pick: 0 });
  active = objects.length - 1;
  refresh();
}

/** The chosen mask of an object: the picked candidate, or the object's answer. */
function chosen(obj) {
  if (!obj.answer) return null;
  return obj.answer.candidates ? obj.answer.candidates[obj.pick] : obj.answer;
}

function refresh() {
  stage.overlay.points = objects.flatMap((o) => o.points.map(([x, y, label]) => ({ x, y, label })));
  stage.overlay.draft = null;
  const items = objects.map((obj, i) => {
    const mask = chosen(obj);
    const color = colorOf(i);
    if (mask && (!obj.layerOf || obj.layerOf !== mask)) {
      obj.layer = maskLayer(mask.mask, color);
      obj.layerOf = mask;
    }
    return { key: `o${i}`, label: `object ${i + 1}${i === active ? " (selected)" : ""} · ${obj.points.length} clicks` +
      `${obj.box ? " + box" : ""}`, score: mask ? mask.score : null, color, box: mask ? mask.box : obj.box,
    layer: mask ? obj.layer : null, hidden: false, active: i === active,
    onSelect: () => { active = i; refresh(); } };
  });
  setGroups("click", [{ title: "Objects", items }]);
  renderCandidates();
}

function renderCandidates() {
  const box = $("candidates");
  box.replaceChildren();
  const obj = objects[active];
  if (!obj || !obj.answer || !obj.answer.candidates) return;
  obj.answer.candidates.forEach((cand, i) => {
    const thumb = el("canvas");
    thumb.width = stage.width;
    thumb.height = stage.height;
    drawScene(thumb, stage.bitmap, [{ layer: maskLayer(cand.mask, colorOf(active)), color: colorOf(active) }],
      { boxes: false, alpha: 0.6 });
    box.append(el("button", { class: "candidate", "aria-pressed": String(i === obj.pick), dataset: { index: String(i) },
      title: `candidate ${i + 1}: predicted IoU ${fmtScore(cand.score)}`,
      onclick: () => pick(i) }, thumb, el("span", { class: "score" }, `#${i + 1} ${fmtScore(cand.score)}`)));
  });
}

/** Use candidate `i` of the selected object (its mask_input refines from there). */
export function pick(i) {
  const obj = objects[active];
  if (!obj || !obj.answer || !obj.answer.candidates || !obj.answer.candidates[i]) return;
  obj.pick = i;
  obj.maskInput = obj.answer.candidates[i].mask_input || obj.maskInput;
  refresh();
}

/** Ask for the selected object's mask with all its clicks, box and previous mask_input. */
async function segment() {
  const obj = objects[active];
  if (!obj) return;
  if (!obj.points.length && !obj.box) {
    obj.answer = null;
    refresh();
    return;
  }
  const mine = ++seq;
  const index = active;
  await busy(async () => {
    const id = await imageId();
    if (!id) return;
    const prompt = {};
    if (obj.points.length) {
      prompt.points = obj.points.map(([x, y]) => [Math.round(x), Math.round(y)]);
      prompt.point_labels = obj.points.map((p) => p[2]);
    }
    if (obj.box) prompt.box = obj.box.map(Math.round);
    if (obj.maskInput) prompt.mask_input = obj.maskInput;
    const answer = await request("v1/pvs/image", { json: { image_id: id, objects: [prompt],
      multimask_output: $("multimask").checked } });
    if (mine !== seq || objects[index] !== obj) return;
    obj.answer = answer.objects[0];
    obj.pick = 0;
    obj.maskInput = obj.answer.mask_input || null;
    $("image-canvas").dataset.clickRequestId = answer.request_id;
    refresh();
  });
}

function addPoint(x, y, label) {
  if (active < 0) newObject();
  const obj = objects[active];
  obj.history.push(obj.maskInput);
  obj.points.push([x, y, label]);
  refresh();
  segment();
}

function setBox(box) {
  if (active < 0) newObject();
  const obj = objects[active];
  obj.history.push(obj.maskInput);
  obj.box = box;
  refresh();
  segment();
}

/** Undo the selected object's last click (or its box). */
export function undo() {
  const obj = objects[active];
  if (!obj || (!obj.points.length && !obj.box)) return;
  if (obj.points.length) obj.points.pop();
  else obj.box = null;
  obj.maskInput = obj.history.pop() || null;
  refresh();
  segment();
}

export function clearObjects() {
  objects = [];
  active = -1;
  seq += 1;
  refresh();
}

export { newObject };

export function initClick() {
  const canvas = $("image-canvas");
  let press = null; // {sx, sy, x, y, button, shift}
  canvas.addEventListener("contextmenu", (e) => { if (stage.mode === "click") e.preventDefault(); });
  canvas.addEventListener("mousedown", (e) => {
    if (stage.mode !== "click" || !stage.width) return;
    const [x, y] = eventToImage(canvas, e);
    press = { sx: e.clientX, sy: e.clientY, x, y, button: e.button, shift: e.shiftKey };
  });
  canvas.addEventListener("mousemove", (e) => {
    if (!press) return;
    if (Math.hypot(e.clientX - press.sx, e.clientY - press.sy) < DRAG_PX) return;
    const [x, y] = eventToImage(canvas, e);
    stage.overlay.draft = [Math.min(press.x, x), Math.min(press.y, y), Math.max(press.x, x), Math.max(press.y, y)];
    render();
  });
  window.addEventListener("mouseup", (e) => {
    if (!press) return;
    const p = press;
    press = null;
    const draft = stage.overlay.draft;
    stage.overlay.draft = null;
    if (draft && draft[2] - draft[0] >= 2 && draft[3] - draft[1] >= 2) {
      setBox(draft);
    } else if (e.target === canvas) {
      addPoint(p.x, p.y, p.button === 2 || p.shift ? 0 : 1);
    } else {
      render();
    }
  });
  $("click-new").addEventListener("click", newObject);
  $("click-undo").addEventListener("click", undo);
  $("click-clear").addEventListener("click", clearObjects);
  $("multimask").addEventListener("change", () => segment());
  onImageLoaded(() => { objects = []; active = -1; seq += 1; $("candidates").replaceChildren(); });
}
