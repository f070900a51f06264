// The decoder's per-image outputs (exporter 7 on: the first block's image projections). They depend on the
// image alone, and the graph takes them back as inputs "cached_<name>" (an empty tensor: compute them). The
// image's first run without a mask prompt computes and returns them (the worker runs one soon after the
// embedding arrives); the runs after it feed them back and do not fetch them. A mask prompt changes the image
// rows, so a run with one neither takes nor keeps them.

export class PerImageOutputs {
  /**
   * @param {object} ort the onnxruntime-web module
   * @param {object} session its InferenceSession (a decoder without per-image outputs has none: names is [])
   */
  constructor(ort, session) {
    this.outputNames = session.outputNames;
    this.names = session.outputNames.filter((name) => session.inputNames.includes(`cached_${name}`));
    this.notGiven = new ort.Tensor("float32", new Float32Array(0), [0, 0, 0, 0]);
    this.kept = null; // {name: ort.Tensor} of the current image
  }

  /**
   * What a run does with them.
   * @param {boolean} reuse whether the run may take the image's kept outputs (no mask prompt, the image's own)
   * @returns {{feeds: object, fetches: string[], computes: boolean}} the `cached_*` feeds, the outputs to fetch,
   *   and whether this run computes the outputs for the image to keep
   */
  plan(reuse) {
    const given = reuse ? this.kept : null;
    const feeds = Object.fromEntries(this.names.map((name) => [`cached_${name}`, given?.[name] ?? this.notGiven]));
    const computes = reuse && !given && this.names.length > 0;
    const fetches = this.outputNames.filter((name) => !this.names.includes(name) || computes);
    return { feeds, fetches, computes };
  }

  /** Takes a computing run's per-image outputs out of `outputs` (which its callers read and dispose of). */
  take(outputs) {
    const taken = {};
    for (const name of this.names) {
      taken[name] = outputs[name];
      delete outputs[name];
    }
    return taken;
  }
}
