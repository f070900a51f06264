"""Bytes over the wire (Resource Timing transferSize) of a first visit and of a repeat visit with a new image.

The page and its decoder worker each keep their own Resource Timing entries; both are read. A first visit
(empty cache) opens the page, picks the first gallery image and hovers it until a mask is drawn. A repeat visit
(same browser profile, new page) uploads an image never seen before: the decoder and onnxruntime-web come from
the cache without a request (immutable, versioned URLs), and the only bodies that cross the wire are that
image's upload answer and its embedding, besides the small JSON of the API and revalidated page files.
"""

from __future__ import annotations

import numpy as np
import pytest
from browser_helpers import first_mask_on_a_gallery_image, open_app, resource_transfers, upload, wait_for_a_mask
from PIL import Image

pytestmark = pytest.mark.timeout(1200)

FIRST_VISIT_MAX_BYTES = 10_000_000
# Page files revalidated (304, headers only) and the API's small JSON answers on a repeat visit.
REPEAT_VISIT_OTHER_MAX_BYTES = 64_000


def test_first_visit_is_light_and_a_repeat_visit_fetches_only_the_new_embedding(browser, live_server, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        first = first_mask_on_a_gallery_image(page, live_server)
        total = sum(e["transferSize"] for e in first)
        print(f"\nfirst visit (WASM): {total:,} B over the wire in {len(first)} requests")
        for entry in sorted(first, key=lambda e: -e["transferSize"])[:6]:
            print(f"  {entry['transferSize']:>10,} B  {entry['name']}")
        assert total <= FIRST_VISIT_MAX_BYTES
        decoder = [e for e in first if "/models/" in e["name"]]
        assert len(decoder) == 1 and decoder[0]["transferSize"] > 1_000_000, decoder
        page.close()

        image = tmp_path / "new.png"
        rng = np.random.default_rng(7)
        Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8)).save(image)
        page = context.new_page()
        page.set_default_timeout(120_000)
        open_app(page, live_server)
        upload(page, image)
        wait_for_a_mask(page)
        repeat = resource_transfers(page)
        cached = [e for e in repeat if "/models/" in e["name"] or "/vendor/ort" in e["name"]]
        assert any(e["name"].endswith(".wasm") for e in cached), [e["name"] for e in repeat]
        # No request at all (not even a revalidation) for the decoder and onnxruntime-web.
        assert all(e["transferSize"] == 0 for e in cached), [(e["name"], e["transferSize"]) for e in cached]
        bodies = [e for e in repeat if e["transferSize"] > 0 and e["transferSize"] >= e["encodedBodySize"] > 0]
        embedding = [e for e in bodies if "/api/embeddings/" in e["name"]]
        assert len(embedding) == 1 and embedding[0]["transferSize"] > 500_000, embedding
        other = sum(e["transferSize"] for e in repeat if e not in embedding)
        print(f"repeat visit, new image: embedding {embedding[0]['transferSize']:,} B, everything else {other:,} B")
        big = [e["name"] for e in bodies if e not in embedding and e["transferSize"] > 16_000]
        assert not big, f"files sent again on a repeat visit: {big}"
        assert other <= REPEAT_VISIT_OTHER_MAX_BYTES
    finally:
        context.close()
