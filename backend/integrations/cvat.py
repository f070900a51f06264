"""CVAT's SAM interactor, by emulating the part of the nuclio dashboard API that CVAT calls (``SAM_CVAT=1``).

CVAT lists functions with ``GET /api/functions`` and ``GET /api/functions/<id>``, and invokes one with ``POST
/api/function_invocations`` (header ``x-nuclio-function-name``). Its SAM function answers the image's embedding,
``{"blob": base64 of float32 [1, 256, 64, 64]}``, and CVAT's browser plug-in runs the decoder on it. The
embedding here is the page's: same decoding, same cache. CVAT's bundled decoder is the vit_h export, so the
server must run ``vit_h`` for the plug-in's masks to be right (docs/integrations.md).

On SAM 2 / 2.1 the server offers CVAT's SAM 2 function instead (``pth-facebookresearch-sam2-vit-h``, a plain
interactor without a browser plug-in): it decodes here, on the cached features, and answers the mask for the
points, ``{"mask": [[0 or 1, ...], ...]}`` at the image's size, as CVAT's does (toolkit.predict_mask: the
best-scored of three for one click, as CVAT's; one mask for several points).
"""

from __future__ import annotations

import base64
import math

import numpy as np
from flask import Blueprint, jsonify, request

from ..runtime.quote import shorten
from ..services.model_runner import is_sam2
from .toolkit import (
    Prompt,
    ToolError,
    answer_errors_as_json,
    base64_bytes,
    embed_image,
    json_object,
    predict_mask,
    toolkit,
)

cvat = Blueprint("cvat", __name__, url_prefix="/api")
answer_errors_as_json(cvat)

# The id CVAT's SAM plug-in looks for (its serverless function's metadata.name).
FUNCTION_ID = "pth-facebookresearch-sam-vit-h"
# CVAT's SAM 2 function (serverless/pytorch/facebookresearch/sam2): decodes on the server, answers a mask.
SAM2_FUNCTION_ID = "pth-facebookresearch-sam2-vit-h"
MAX_POINTS = 256


def serves_sam2() -> bool:
    return is_sam2(toolkit().encoder.model)


def function_id() -> str:
    """The function this server offers: SAM 1's (embedding for the browser plug-in) or SAM 2's (masks)."""
    return SAM2_FUNCTION_ID if serves_sam2() else FUNCTION_ID


def function_info() -> dict:
    """The function as the nuclio dashboard lists it, with the fields CVAT's lambda manager reads."""
    sam2 = serves_sam2()
    return {
        "metadata": {
            "name": function_id(),
            "namespace": "cvat",
            "annotations": {
                "name": "Segment Anything 2" if sam2 else "Segment Anything",
                "version": "2",
                "type": "interactor",
                "spec": "",
                "min_pos_points": "1" if sam2 else "0",
                "min_neg_points": "0",
                "startswith_box_optional": "false" if sam2 else "true",
                "help_message": "The interactor allows to get a mask of an object using at least one positive, "
                "and any negative points inside it",
                "animated_gif": "",
                "framework": "pytorch",
            },
        },
        "spec": {
            "description": f"Interactive object segmentation with Segment Anything ({toolkit().encoder.model_key})",
            "runtime": "python:3.11",
            "handler": "backend.integrations.cvat",
        },
        "status": {"state": "ready", "httpPort": toolkit().config.port},
    }


@cvat.get("/functions")
def list_functions():
    return jsonify({function_id(): function_info()})


@cvat.get("/functions/<function_id>")
def get_function(function_id: str):
    _require_function(function_id)
    return jsonify(function_info())


@cvat.post("/function_invocations")
def invoke():
    _require_function(request.headers.get("x-nuclio-function-name", ""))
    body = json_object(request.get_json(silent=True), "invocation")
    for field in ("pos_points", "neg_points"):
        _check_points(body.get(field), field)
    _check_box(body.get("obj_bbox"))
    data = base64_bytes(body.get("image"), "image", toolkit().config.max_upload_bytes)
    result, _ = embed_image(data)
    if result.entry.is_sam2:
        return jsonify(mask=_sam2_mask(result.entry, body).astype(np.uint8).tolist())
    embedding = np.ascontiguousarray(result.entry.embedding, dtype="<f4").reshape(1, 256, 64, 64)
    return jsonify(blob=base64.b64encode(embedding.tobytes()).decode("ascii"))


def _sam2_mask(entry, body: dict) -> np.ndarray:
    """CVAT's SAM 2 function: the mask for the points (bool [H, W] at the image's size)."""
    positive, negative = body.get("pos_points") or [], body.get("neg_points") or []
    if not positive:
        raise ToolError(400, "missing_points", "SAM 2 needs at least one point in pos_points")
    points = np.array(positive + negative, dtype=np.float32)
    labels = np.array([1] * len(positive) + [0] * len(negative))
    mask, _ = predict_mask(entry, Prompt(points=points, labels=labels))
    return mask


def _require_function(name: str) -> None:
    offered = function_id()
    if name != offered:
        raise ToolError(
            404,
            "unknown_function",
            f"no function {shorten(name) or '(none)'}: this server offers {offered} (set x-nuclio-function-name)",
        )


def _check_points(points: object, field: str) -> None:
    # The plug-in decodes in the browser, so the points are not used here; they are still checked, so a
    # malformed call is told so instead of silently answered.
    if points is None:
        return
    if not isinstance(points, list) or len(points) > MAX_POINTS:
        raise ToolError(400, "malformed_points", f"{field} must be a list of at most {MAX_POINTS} [x, y] points")
    for point in points:
        if not _numbers(point, 2):
            raise ToolError(400, "malformed_points", f"{field} must hold [x, y] pairs of numbers")


def _check_box(box: object) -> None:
    if box is None or box == []:
        return
    flat = box[0] + box[1] if isinstance(box, list) and len(box) == 2 and all(_numbers(p, 2) for p in box) else box
    if not _numbers(flat, 4):
        raise ToolError(400, "malformed_box", "obj_bbox must be [[x0, y0], [x1, y1]] or [x0, y0, x1, y1]")


def _numbers(value: object, count: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
