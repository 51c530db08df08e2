// Concept mode: text concepts as chips -> POST /v1/pcs/image {"image": {"image_id"}, "prompts": [{"text"}],
// "threshold", "mask_threshold", "max_instances"} -> every instance of every concept drawn over the image.
// Instance boxes are xyxy pixels of the original image; masks are COCO RLE decoded in the browser.

import { request } from "./api.js";
import { colorOf, css, maskLayer } from "./draw.js";
import { imageId, setGroups, stage } from "./image.js";
import { $, busy, el, slider } from "./ui.js";

const concepts = []; // the chips' texts, in order
let threshold;
let maskThreshold;

function renderChips() {
  const box = $("concept-chips");
  box.replaceChildren(...concepts.map((text, i) => {
    const chip = el("span", { class: "chip", dataset: { concept: text } }, text,
      el("button", { title: `remove "${text}"`, "aria-label": `remove ${text}`,
        onclick: () => { concepts.splice(i, 1); renderChips(); } }, "×"));
    chip.style.background = css(colorOf(i * 3));
    return chip;
  }));
}

/** Add a concept chip (trimmed; duplicates ignored). */
export function addConcept(text) {
  const t = text.trim();
  if (t && !concepts.includes(t) && concepts.length < 16) concepts.push(t);
  renderChips();
}

/** Run the concepts on the loaded image and show the instances. */
export async function runConcepts() {
  const pending = $("concept-input").value.trim();
  if (pending) {
    addConcept(pending);
    $("concept-input").value = "";
  }
  if (!stage.upload || !concepts.length) return;
  await busy(async () => {
    const id = await imageId();
    if (!id) return;
    const answer = await request("v1/pcs/image", { json: {
      image: { image_id: id }, prompts: concepts.map((text) => ({ text })), threshold: threshold(),
      mask_threshold: maskThreshold(), max_instances: Number($("max-instances").value) || 20, mask_format: "rle",
    } });
    if (answer.image_id !== stage.imageId) return; // another image was loaded meanwhile
    let n = 0;
    const groups = answer.results.map((result, p) => ({
      title: result.prompt.text || `prompt ${p + 1}`,
      color: colorOf(p * 3),
      items: result.instances.map((inst) => {
        const color = colorOf(n);
        n += 1;
        return { key: `c${p}-${inst.id}`, label: `${result.prompt.text} #${inst.id}`, score: inst.score, color,
          box: inst.box, layer: inst.mask ? maskLayer(inst.mask, color) : null, hidden: false };
      }),
    }));
    setGroups("concept", groups);
    $("image-canvas").dataset.conceptRequestId = answer.request_id;
  });
}

export function initConcept() {
  threshold = slider("threshold");
  maskThreshold = slider("mask-threshold");
  $("concept-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      const v = e.target.value;
      e.target.value = "";
      if (v.trim()) addConcept(v);
      else runConcepts();
    }
  });
  $("concept-run").addEventListener("click", runConcepts);
  // moving a slider re-runs the concepts once results are shown
  for (const id of ["threshold", "mask-threshold", "max-instances"]) {
    $(id).addEventListener("change", () => { if (stage.groups.concept.length) runConcepts(); });
  }
}
