// onnxruntime-web session options for the decoders, shared by the worker and the benchmark page.
//
// The weight-only quantized files (model_export/quantize.py) store each int8 weight behind a DequantizeLinear.
// With its QDQ fusions on, onnxruntime keeps those nodes (for integer kernels these float graphs do not use)
// and dequantizes on every run; with them off it folds each weight once, when the session is created, in one
// step (model_export/quantize.py SESSION_CONFIG holds the same entry for Python sessions). Other files have no
// such nodes and are not affected.
const extra = { session: { disable_quant_qdq: "1" } };

/** Options of a decoder session on the given execution provider ("wasm" or "webgpu"). */
export function decoderSessionOptions(provider, more = {}) {
  return {
    executionProviders: [provider],
    graphOptimizationLevel: "all",
    logSeverityLevel: 3,
    extra,
    ...more,
  };
}
