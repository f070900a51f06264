"""The torch SamPredictor as an oracle for the Firefox suite: one JSON request per stdin line, one answer line.

It runs the server's own fallback model (backend.services.weights.random_model(): seeded random vit_t, fp32; with a
model type argument, e.g. `sam2.1_hiera_t`, that type's seeded random model and SAM2ImagePredictor) on the
image the browser uploaded, decoded as the server decodes it, so a mask the browser shows or exports can be
compared with Meta's predictor API for the same prompt without the browser suite holding any Python.

Request:  {"image": path, "points": [[x, y], ...] | null, "labels": [1, 0, ...] | null,
           "box": [x0, y0, x1, y1] | null, "multimask": bool,
           "shown": {"coco": {"size": [H, W], "counts": str}} | {"bits": base64 of H*W bytes 0/1, "size": [H, W]}}
Answer:   {"agreement": fraction of equal pixels, "expected_pixels": int, "shown_pixels": int, "size": [H, W],
           "candidate": index of the mask compared (highest predicted IoU)} or {"error": message}.
A line "ready" is written once the model is built.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np


def shown_mask(shown: dict) -> np.ndarray:
    """The browser's mask as bool [H, W], from a COCO RLE export or from the overlay's alpha bits."""
    from backend.sam.amg import coco_decode_rle, rle_to_mask

    if "coco" in shown:
        return rle_to_mask(coco_decode_rle(shown["coco"])).astype(bool)
    height, width = shown["size"]
    bits = np.frombuffer(base64.b64decode(shown["bits"]), dtype=np.uint8)
    return bits.reshape(height, width).astype(bool)


class Oracle:
    def __init__(self, model_type: str | None = None) -> None:
        from backend.sam import SamPredictor
        from backend.sam2 import SAM2ImagePredictor
        from backend.services.weights import model_family, random_model

        if model_type is None:
            self.predictor = SamPredictor(random_model().eval())
        elif model_family(model_type) == "sam":
            self.predictor = SamPredictor(random_model(model_type).eval())
        else:
            self.predictor = SAM2ImagePredictor(random_model(model_type).eval())
        self.image: str | None = None

    def use_image(self, path: str) -> None:
        """Embeds the image at `path` (decoded as the server decodes it) unless it is the one embedded."""
        from backend.services.images import decode_image

        if path != self.image:
            self.predictor.set_image(decode_image(Path(path).read_bytes()).pixels)
            self.image = path

    def answer(self, request: dict) -> dict:
        self.use_image(request["image"])
        points, labels, box = request.get("points"), request.get("labels"), request.get("box")
        masks, scores, _ = self.predictor.predict(
            point_coords=None if points is None else np.array(points, dtype=np.float32),
            point_labels=None if labels is None else np.array(labels),
            box=None if box is None else np.array(box, dtype=np.float32),
            multimask_output=bool(request.get("multimask", False)),
        )
        best = int(np.argmax(scores))
        expected = masks[best].astype(bool)  # SAM2ImagePredictor's masks are 0/1 floats
        shown = shown_mask(request["shown"])
        if shown.shape != expected.shape:
            return {"error": f"the browser's mask is {list(shown.shape)}, the predictor's {list(expected.shape)}"}
        return {
            "agreement": float((shown == expected).mean()),
            "expected_pixels": int(expected.sum()),
            "shown_pixels": int(shown.sum()),
            "size": list(expected.shape),
            "candidate": best,
        }


def main() -> None:
    oracle = Oracle(sys.argv[1] if len(sys.argv) > 1 else None)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = oracle.answer(json.loads(line))
        except Exception as error:  # the suite shows the message; a traceback here would only hang it
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
