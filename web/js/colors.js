// Distinct, readable object colours (Okabe-Ito-like, then a golden-angle hue walk).

const PALETTE = [
  [0, 114, 178], [230, 159, 0], [0, 158, 115], [204, 121, 167], [86, 180, 233],
  [213, 94, 0], [240, 228, 66], [120, 94, 240], [220, 38, 127], [100, 143, 255],
];

function hslToRgb(h, s, l) {
  const f = (n) => {
    const k = (n + h / 30) % 12;
    const a = s * Math.min(l, 1 - l);
    return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

/** [r, g, b] of the n-th object. */
export function colorFor(n) {
  if (n < PALETTE.length) return PALETTE[n];
  return hslToRgb((n * 137.508) % 360, 0.7, 0.5);
}

export const cssColor = ([r, g, b], alpha = 1) => `rgba(${r}, ${g}, ${b}, ${alpha})`;
