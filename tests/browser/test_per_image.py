"""The image's per-image decoder outputs (web/js/decoder/per-image.js, the first block's image projections).

The worker computes them soon after an embedding arrives, so a person's first prompt on a new image decodes as
fast as the ones after it; a script that decodes as soon as the image is ready computes them in its own run
instead of waiting. Real server (seeded random MobileSAM), real Chromium, the default decoder in its worker.
"""

from __future__ import annotations

import pytest
from backend_fixtures import SMALL_PHOTO, photo_jpeg
from browser_helpers import encoded_image

pytestmark = pytest.mark.timeout(300)

FIRST_PROMPTS = """async ({embeddingUrl, size, click}) => {
  const { DecoderClient } = await import(new URL("js/decoder/decoder-client.js", location.href));
  const { startDecoder } = await import(new URL("js/decoder/decoder-startup.js", location.href));
  const decoder = new DecoderClient();
  await startDecoder(decoder, { backend: "wasm" });
  const embedding = await (await fetch(embeddingUrl)).arrayBuffer();
  const prompt = { points: [{ x: click[0], y: click[1], label: 1 }], box: null, maskInput: null, multimask: true,
                   outSize: size };
  await decoder.setEmbedding(embedding.slice(0), size);
  const atOnce = await decoder.decode(prompt); // a script: as soon as the image is ready
  await decoder.setEmbedding(embedding.slice(0), size); // the same embedding as a new image
  await new Promise((resolve) => setTimeout(resolve, 500)); // a person: the first hover comes later
  const later = await decoder.decode(prompt);
  const again = await decoder.decode(prompt);
  decoder.terminate();
  const same = (a, b) => a.best === b.best && a.lowRes.every((v, i) => v === b.lowRes[i]) &&
    a.candidates.every((c) => a.masks[c].every((v, i) => v === b.masks[c][i]));
  return {
    computed: [atOnce, later, again].map((r) => r.computedPerImage),
    same: same(atOnce, later) && same(later, again),
    painted: atOnce.masks[atOnce.best].reduce((n, v) => n + v, 0),
  };
}"""


def test_a_new_images_per_image_outputs_are_ready_before_its_first_prompt(page, live_server):
    embedding_url, size = encoded_image(live_server, photo_jpeg(*SMALL_PHOTO))
    page.goto(live_server.url + "?backend=wasm")
    answer = page.evaluate(
        FIRST_PROMPTS, {"embeddingUrl": embedding_url, "size": size, "click": [size[1] // 2, size[0] // 2]}
    )
    # The script's decode computed them itself; the person's first decode found them computed, as did the next.
    assert answer["computed"] == [True, False, False]
    # And the masks are the same either way, bit for bit.
    assert answer["same"] is True
    assert answer["painted"] > 0
