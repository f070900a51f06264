// Polygons of a binary mask along pixel edges. Filled with the even-odd rule they cover exactly the mask's
// pixels (holes included), so an SVG export rasterises back to the mask shown.

/**
 * Closed outlines of a row-major [H, W] mask; each is a flat [x0, y0, x1, y1, ...] list of pixel corners,
 * with collinear corners removed.
 */
export function maskToPolygons(mask, [H, W]) {
  const stride = W + 1;
  // Up to two outgoing boundary edges per corner (two at a diagonal "saddle" corner).
  const outA = new Int32Array((H + 1) * stride).fill(-1);
  const outB = new Int32Array((H + 1) * stride).fill(-1);
  const inside = (x, y) => x >= 0 && y >= 0 && x < W && y < H && mask[y * W + x] !== 0;
  const addEdge = (from, to) => {
    if (outA[from] < 0) outA[from] = to;
    else outB[from] = to;
  };
  let edges = 0;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      if (!mask[y * W + x]) continue;
      // Clockwise on screen around each pixel, so the mask is always on the right of travel.
      const tl = y * stride + x, tr = tl + 1, bl = tl + stride, br = bl + 1;
      if (!inside(x, y - 1)) { addEdge(tl, tr); edges++; }
      if (!inside(x + 1, y)) { addEdge(tr, br); edges++; }
      if (!inside(x, y + 1)) { addEdge(br, bl); edges++; }
      if (!inside(x - 1, y)) { addEdge(bl, tl); edges++; }
    }
  }
  const polygons = [];
  for (let start = 0; start < outA.length && edges > 0; start++) {
    while (outA[start] >= 0 || outB[start] >= 0) {
      const corners = [];
      let at = start;
      do {
        corners.push(at);
        let next;
        if (outA[at] >= 0) {
          next = outA[at];
          outA[at] = outB[at];
          outB[at] = -1;
        } else {
          next = outB[at];
          outB[at] = -1;
        }
        edges--;
        at = next;
      } while (at !== start);
      polygons.push(simplify(corners, stride));
    }
  }
  return polygons;
}

/** Drops corners that lie on a straight run; returns flat [x, y, ...] coordinates. */
function simplify(corners, stride) {
  const n = corners.length;
  const xy = (i) => {
    const c = corners[(i + n) % n];
    return [c % stride, Math.floor(c / stride)];
  };
  const flat = [];
  for (let i = 0; i < n; i++) {
    const [px, py] = xy(i - 1);
    const [x, y] = xy(i);
    const [nx, ny] = xy(i + 1);
    if ((x - px) * (ny - y) - (y - py) * (nx - x) !== 0) flat.push(x, y);
  }
  return flat;
}

/** SVG path data ("M x y L ... Z" per outline) of a mask's polygons, scaled by `scale`. */
export function polygonsToPath(polygons, scale = 1) {
  return polygons
    .map((p) => {
      let d = `M${p[0] * scale} ${p[1] * scale}`;
      for (let i = 2; i < p.length; i += 2) d += `L${p[i] * scale} ${p[i + 1] * scale}`;
      return d + "Z";
    })
    .join("");
}
