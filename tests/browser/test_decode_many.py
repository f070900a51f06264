"""Many prompts in one decoder run, through the page's decoder client (DecoderClient.decodeMany).

Real server (seeded random MobileSAM), real Chromium, the default lowres-quantized decoder in its worker.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
from backend_fixtures import SMALL_PHOTO, photo_jpeg, vit_t_model
from browser_helpers import CHROMIUM, WEBGPU_ARGS, encoded_image

pytestmark = pytest.mark.timeout(300)

# Five boxes and a click (2 tokens each: a box's corners, or the point and the padding point: one run) and a
# two-point prompt (3 tokens: a second run), in pixels of the 800x534 photo; the last box carries the click's
# best low-res logits as a mask prompt.
BOXES = [[80, 60, 420, 380], [300, 120, 760, 500], [20, 20, 200, 200], [400, 250, 700, 520], [150, 90, 640, 450]]
CLICKS = [[[420, 250]], [[200, 120], [260, 150]]]

DECODE_MANY = """async ({boxes, clicks, embeddingUrl, size}) => {
  const { DecoderClient } = await import(new URL("js/decoder/decoder-client.js", location.href));
  const { startDecoder } = await import(new URL("js/decoder/decoder-startup.js", location.href));
  const decoder = new DecoderClient();
  const { info } = await startDecoder(decoder, { backend: "wasm" });
  const embedding = await (await fetch(embeddingUrl)).arrayBuffer();
  await decoder.setEmbedding(embedding, size);
  const clickPrompts = clicks.map((points) => ({ points: points.map(([x, y]) => ({ x, y, label: 1 })), box: null,
                                                maskInput: null, multimask: points.length === 1 }));
  const first = await decoder.decode({ ...clickPrompts[0], outSize: size });
  const refine = Float32Array.from(first.lowRes.subarray(first.best * 65536, (first.best + 1) * 65536));
  const prompts = [
    ...boxes.map((box, i) => ({ points: [], box, maskInput: i === boxes.length - 1 ? refine : null })),
    ...clickPrompts,
  ];
  const many = await decoder.decodeMany(prompts, { outSize: size, allMasks: true });
  const bits = (mask) => {
    const packed = new Uint8Array(Math.ceil(mask.length / 8));
    for (let i = 0; i < mask.length; i++) if (mask[i]) packed[i >> 3] |= 128 >> (i & 7);
    let text = "";
    for (let i = 0; i < packed.length; i += 8192) text += String.fromCharCode(...packed.subarray(i, i + 8192));
    return btoa(text);
  };
  const alone = [];
  for (const prompt of prompts) alone.push(await decoder.decode({ ...prompt, multimask: prompt.multimask ?? false, outSize: size }));
  decoder.terminate();
  return {
    batchable: info.batchable,
    runs: many.runs,
    results: many.results.map((r, i) => ({
      best: r.best,
      aloneBest: alone[i].best,
      scores: Array.from(r.scores),
      aloneScores: Array.from(alone[i].scores),
      maxLowResDiff: r.lowRes.reduce((m, v, j) => Math.max(m, Math.abs(v - alone[i].lowRes[j])), 0),
      sameMasks: r.candidates.every((c) => r.masks[c].every((v, j) => v === alone[i].masks[c][j])),
      mask: bits(r.masks[r.best]),
    })),
  };
}"""


def unpack(text: str, shape) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))
    return bits[: shape[0] * shape[1]].reshape(shape).astype(bool)


def test_decode_many_runs_boxes_together_and_equals_their_own_decodes(page, live_server):
    from backend.sam import SamPredictor
    from backend.services.codec import decode_embedding

    embedding_url, size = encoded_image(live_server, photo_jpeg(*SMALL_PHOTO))
    page.goto(live_server.url + "?backend=wasm")
    answer = page.evaluate(
        DECODE_MANY,
        {
            "boxes": BOXES,
            "clicks": CLICKS,
            "embeddingUrl": embedding_url,
            "size": size,
        },
    )
    assert answer["batchable"] is True
    # The boxes and the click share a token count: runs of at most 4 prompts (the decoder memory is sized for
    # that), so 4 + 2; the two-point prompt in a third run.
    assert answer["runs"] == 3
    for i, result in enumerate(answer["results"]):
        assert result["sameMasks"], i
        assert result["best"] == result["aloneBest"], i
        np.testing.assert_allclose(result["scores"], result["aloneScores"], atol=1e-5)
        assert result["maxLowResDiff"] < 1e-4, (i, result["maxLowResDiff"])

    # And they are the masks of Meta's API on the server's embedding.
    predictor = SamPredictor(vit_t_model())
    body = requests.get(embedding_url, timeout=60).content
    predictor.set_embedding(decode_embedding(body), tuple(size))
    for box, result in zip(BOXES[:-1], answer["results"], strict=False):
        masks, _, _ = predictor.predict(box=np.array(box), multimask_output=False)
        assert (unpack(result["mask"], size) == masks[0]).mean() >= 0.99
    masks, scores, _ = predictor.predict(np.array(CLICKS[0]), np.array([1]), multimask_output=True)
    assert (unpack(answer["results"][-2]["mask"], size) == masks[int(np.argmax(scores))]).mean() >= 0.99
    masks, _, _ = predictor.predict(np.array(CLICKS[1]), np.array([1, 1]), multimask_output=False)
    assert (unpack(answer["results"][-1]["mask"], size) == masks[0]).mean() >= 0.99


WEBGPU_AGAINST_WASM = """async ({embeddingUrl, size, boxes}) => {
  const { DecoderClient } = await import(new URL("js/decoder/decoder-client.js", location.href));
  const { startDecoder } = await import(new URL("js/decoder/decoder-startup.js", location.href));
  const embedding = await (await fetch(embeddingUrl)).arrayBuffer();
  const answers = {};
  // "auto" twice: the second start opens the engine the first one's race chose (engine-race-memory.js).
  for (const [name, backend] of [["webgpu", "webgpu"], ["wasm", "wasm"], ["auto", "auto"], ["auto-again", "auto"]]) {
    const decoder = new DecoderClient();
    const started = performance.now();
    const { info, runsOn } = await startDecoder(decoder, { backend });
    const startMs = performance.now() - started;
    await decoder.setEmbedding(embedding.slice(0), size);
    const prompts = boxes.map((box) => ({ points: [], box, maskInput: null }));
    const { results, runs } = await decoder.decodeMany(prompts, { outSize: size });
    console.log(`decode-many on ${name}: ${info.provider}`);
    answers[name] = { provider: info.provider, ortBuild: info.ortBuild, engineMs: info.engineMs, runsOn, runs, startMs,
                         lowRes: results.map((r) => Array.from(r.lowRes.subarray(0, 65536))),
                         masks: results.map((r) => Array.from(r.masks[0])) };
    decoder.terminate();
  }
  return answers;
}"""


@pytest.mark.webgpu
@pytest.mark.timeout(900)
def test_webgpu_decodes_many_prompts_like_wasm_and_auto_keeps_the_faster_engine(playwright_instance, live_server):
    """WebGPU in headless Chromium is SwiftShader (a CPU emulation): the same graph's masks as WASM, and with
    the engine left to the page ("auto") both are timed and the faster kept (WASM, against an emulated GPU), in
    onnxruntime-web's plain WASM build."""
    embedding_url, size = encoded_image(live_server, photo_jpeg(*SMALL_PHOTO))
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=WEBGPU_ARGS)
    try:
        page = browser.new_page()
        page.set_default_timeout(880_000)
        page.goto(live_server.url + "?backend=wasm")
        answers = page.evaluate(
            WEBGPU_AGAINST_WASM,
            {
                "embeddingUrl": embedding_url,
                "size": size,
                "boxes": BOXES[:2],
            },
        )
    finally:
        browser.close()
    gpu, cpu, auto = answers["webgpu"], answers["wasm"], answers["auto"]
    assert (gpu["provider"], cpu["provider"]) == ("webgpu", "wasm")
    assert gpu["runs"] == cpu["runs"] == 1
    for b in range(2):
        np.testing.assert_allclose(gpu["lowRes"][b], cpu["lowRes"][b], atol=2e-3)
        assert np.mean(np.array(gpu["masks"][b]) == np.array(cpu["masks"][b])) >= 0.999
    timed = auto["engineMs"]
    assert timed and timed["webgpu"] > 0 and timed["wasm"] > 0
    faster = "wasm" if timed["wasm"] < timed["webgpu"] else "webgpu"
    assert auto["provider"] == faster
    assert "faster here than" in auto["runsOn"]
    # WASM kept after the race runs in onnxruntime-web's plain build, not the WebGPU build's slower WebAssembly.
    assert auto["ortBuild"] == ("wasm" if faster == "wasm" else "webgpu")
    # A second start in this browser opens the race's winner without racing again, and says when it was timed.
    again = answers["auto-again"]
    assert (again["provider"], again["ortBuild"], again["engineMs"]) == (auto["provider"], auto["ortBuild"], timed)
    assert again["runsOn"] == auto["runsOn"].replace(" a decode)", " a decode, timed on an earlier visit)")
    print(f"start with the race {auto['startMs']:.0f} ms, remembered {again['startMs']:.0f} ms")
    assert again["startMs"] < auto["startMs"] / 3, (again["startMs"], auto["startMs"])
    assert again["masks"] == auto["masks"]
