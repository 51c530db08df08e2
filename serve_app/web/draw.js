// Canvas drawing: an image (or video frame) with mask, box, label and click overlays.
//
// Everything is drawn in IMAGE pixels: the canvas' width/height are the image's, and CSS scales the canvas
// to fit. Boxes are [x0, y0, x1, y1] pixels of the original image; points are [x, y] pixels.

import { decodeRle } from "./rle.js";

// Distinct colours (Tableau 10 + extras), picked by index.
export const PALETTE = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
  [227, 119, 194], [188, 189, 34], [23, 190, 207], [255, 187, 120], [152, 223, 138], [255, 152, 150],
  [197, 176, 213], [196, 156, 148], [247, 182, 210], [219, 219, 141], [158, 218, 229], [57, 59, 121],
];

export function colorOf(index) {
  return PALETTE[((index % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

export function css([r, g, b], a = 1) {
  return `rgba(${r}, ${g}, ${b}, ${a})`;
}

/**
 * A mask ready to draw: the RLE decoded once and painted in `color` on a canvas of the mask's size.
 * Returns {canvas, mask} (mask: see rle.js decodeRle).
 */
export function maskLayer(rle, color) {
  const mask = decodeRle(rle);
  const canvas = document.createElement("canvas");
  canvas.width = mask.width;
  canvas.height = mask.height;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(mask.width, mask.height);
  const px = new Uint32Array(img.data.buffer);
  const [r, g, b] = color;
  const value = (255 << 24) | (b << 16) | (g << 8) | r; // little-endian RGBA
  for (let i = 0; i < mask.data.length; i += 1) if (mask.data[i]) px[i] = value;
  ctx.putImageData(img, 0, 0);
  return { canvas, mask };
}

/**
 * Draw a scene on `canvas` (sized to the image): the image, then every visible item as a translucent mask,
 * its box and its label, then clicks and a box being dragged.
 * items: [{layer (from maskLayer) | null, color, box, label, hidden, highlight}]
 * points: [{x, y, label (1 positive / 0 negative)}]; draft: [x0, y0, x1, y1] or null.
 */
export function drawScene(canvas, image, items, { points = [], draft = null, alpha = 0.5, boxes = true } = {}) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (image) ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  const anyHighlight = items.some((it) => it.highlight && !it.hidden);
  // image pixels per screen pixel: marks keep the same on-screen size however the canvas is scaled
  const scale = canvas.clientWidth ? canvas.width / canvas.clientWidth : 1;
  const line = Math.max(1, 1.5 * scale);
  for (const it of items) {
    if (it.hidden || !it.layer) continue;
    ctx.globalAlpha = it.highlight ? Math.min(1, alpha + 0.3) : anyHighlight ? alpha * 0.4 : alpha;
    ctx.drawImage(it.layer.canvas, 0, 0, canvas.width, canvas.height);
  }
  ctx.globalAlpha = 1;
  if (boxes) {
    const font = 12 * scale;
    ctx.font = `${font}px sans-serif`;
    ctx.textBaseline = "top";
    for (const it of items) {
      if (it.hidden || !it.box) continue;
      const [x0, y0, x1, y1] = it.box;
      ctx.lineWidth = it.highlight ? line * 3 : line;
      ctx.strokeStyle = css(it.color);
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      if (it.label) {
        const w = ctx.measureText(it.label).width + 6;
        const ty = y0 >= font + 4 ? y0 - font - 4 : y0;
        ctx.fillStyle = css(it.color, 0.85);
        ctx.fillRect(x0, ty, w, font + 4);
        ctx.fillStyle = "#fff";
        ctx.fillText(it.label, x0 + 3, ty + 2);
      }
    }
  }
  const radius = Math.max(2, 5 * scale);
  for (const p of points) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, radius, 0, 2 * Math.PI);
    ctx.fillStyle = p.label ? "#22c55e" : "#ef4444";
    ctx.fill();
    ctx.lineWidth = line;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
  if (draft) {
    const [x0, y0, x1, y1] = draft;
    ctx.setLineDash([line * 4, line * 3]);
    ctx.lineWidth = line * 2;
    ctx.strokeStyle = "#facc15";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
  }
}

/** Image pixel [x, y] under a mouse event on `canvas` (CSS-scaled), clamped to the image. */
export function eventToImage(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  const x = ((event.clientX - rect.left) / rect.width) * canvas.width;
  const y = ((event.clientY - rect.top) / rect.height) * canvas.height;
  return [Math.min(Math.max(x, 0), canvas.width - 1), Math.min(Math.max(y, 0), canvas.height - 1)];
}

/** Save the canvas as a PNG file download. */
export function downloadCanvas(canvas, filename) {
  canvas.toBlob((blob) => {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }, "image/png");
}
