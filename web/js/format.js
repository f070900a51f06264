// Plain-word formatting of the figures the page shows: bytes, milliseconds, counts.

/** 1536 -> "1.5 KB"; null -> "–". */
export function formatBytes(bytes) {
  if (bytes == null) return "–";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 ** 2).toFixed(2)} MB`;
}

/** 3.14159 -> "3.1 ms", 123.4 -> "123 ms"; null -> "–". */
export const formatMs = (ms) => (ms == null ? "–" : ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`);

/** plural(1, "mask") -> "1 mask", plural(3, "mask") -> "3 masks". */
export const plural = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;

/** The median of a non-empty list of numbers. */
export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
