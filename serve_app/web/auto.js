// "Segment everything": POST /v1/auto/image {"image_id", "points_per_side", "pred_iou_thresh",
// "stability_score_thresh", "min_mask_area"} -> every mask the point grid finds, on the cached embedding.

import { request } from "./api.js";
import { colorOf, maskLayer } from "./draw.js";
import { imageId, setGroups, stage } from "./image.js";
import { $, busy, slider } from "./ui.js";

let iou;
let stability;

export async function runAuto() {
  if (!stage.upload) return;
  await busy(async () => {
    const id = await imageId();
    if (!id) return;
    const body = { image_id: id, pred_iou_thresh: iou(), stability_score_thresh: stability(), sort_by: "area" };
    const pps = Number($("auto-pps").value);
    if (pps > 0) body.points_per_side = pps;
    const minArea = Number($("auto-min-area").value);
    if (minArea > 0) body.min_mask_area = minArea;
    const answer = await request("v1/auto/image", { json: body });
    if (answer.image_id !== stage.imageId) return;
    const items = answer.masks.map((m, i) => {
      const color = colorOf(i);
      return { key: `a${m.id}`, label: `mask ${m.id} · ${m.area} px`, score: m.score, color, box: m.box,
        layer: maskLayer(m.mask, color), hidden: false };
    });
    setGroups("auto", [{ title: `${answer.masks.length} of ${answer.candidates} candidates`, items }]);
    $("image-canvas").dataset.autoRequestId = answer.request_id;
  });
}

export function initAuto() {
  iou = slider("auto-iou");
  stability = slider("auto-stability");
  $("auto-run").addEventListener("click", runAuto);
}
