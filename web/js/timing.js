// User Timing measures of the page (read by benchmarks, tests and profilers), kept bounded: the browser keeps
// every entry until it is cleared, about 350 bytes each in Chromium, and a hover records three. An hour of
// hovering would otherwise hold tens of megabytes (docs/webkit.md, "Memory").

/** Measures kept per name; past it that name's entries are cleared and counting starts again. */
export const MAX_MEASURES_PER_NAME = 1000;

const counts = new Map(); // name -> measures recorded since that name was last cleared

/** performance.measure(name, options), keeping at most MAX_MEASURES_PER_NAME entries of the name. */
export function measure(name, options) {
  let count = counts.get(name) ?? 0;
  if (count >= MAX_MEASURES_PER_NAME) {
    performance.clearMeasures(name);
    count = 0;
  }
  counts.set(name, count + 1);
  return performance.measure(name, options);
}
