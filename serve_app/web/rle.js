// COCO RLE masks as the API returns them: {"size": [height, width], "counts": "<compressed string>"}.
//
// The runs alternate 0s and 1s (starting with 0s) over the pixels in COLUMN-major order (x outer, y inner),
// as pycocotools stores them. `counts` is pycocotools' compressed string form (rleToString): each run is
// written as a difference to the run two before it (from the third run on), in 5-bit groups, least
// significant first, each group + 48 as one ASCII character, 0x20 = "more groups follow", and bit 0x10 of the
// last group the sign. decodeCounts is pycocotools' rleFrString, line for line.

/** The run lengths of a compressed counts string. */
export function decodeCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k); // x |= (c & 0x1f) << 5k, without 32-bit overflow
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k); // x |= -1 << 5k: the value was negative
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/**
 * Decode a COCO RLE into a row-major mask: {width, height, data: Uint8Array(width*height) of 0/1, area,
 * box: [x0, y0, x1, y1] (x1/y1 exclusive; null when empty)}. Pixel (x, y) is data[y * width + x].
 */
export function decodeRle(rle) {
  const [height, width] = rle.size;
  const counts = typeof rle.counts === "string" ? decodeCounts(rle.counts) : rle.counts;
  const data = new Uint8Array(width * height);
  let pos = 0; // column-major index: x = floor(pos / height), y = pos % height
  let area = 0;
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  for (let i = 0; i < counts.length; i += 1) {
    const run = counts[i];
    if (i % 2 === 1 && run > 0) {
      for (let q = pos; q < pos + run; q += 1) {
        const x = Math.floor(q / height);
        const y = q - x * height;
        data[y * width + x] = 1;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
      area += run;
    }
    pos += run;
  }
  const box = area ? [x0, y0, x1 + 1, y1 + 1] : null;
  return { width, height, data, area, box };
}
