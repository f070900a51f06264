"""Roboflow Inference's SAM 2 routes, as ``inference_sdk.InferenceHTTPClient.sam2_segment_image`` calls them
(``SAM_ROBOFLOW=1``): ``POST /sam2/embed_image`` and ``POST /sam2/segment_image``.

A request carries the image as ``{"type": "base64", "value": ...}`` (URLs and pickled arrays are refused: the
server fetches nothing and unpickles nothing) and, for segmentation, ``prompts.prompts``: each prompt (a box
given by its centre, width and height, and/or points with ``positive``) is one object, answered as the most
confident mask's outline polygons (``format: "json"``) with its ``confidence``, as Roboflow's server answers.
The model is this server's, whatever ``sam2_version_id`` names. ``image_id`` reuses an embedding of the shared
cache (the page's image ids too).
"""

from __future__ import annotations

import math
import time

import numpy as np
from flask import Blueprint, jsonify, request

from ..runtime.quote import shorten
from ..services.cache import is_valid_key
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

roboflow = Blueprint("roboflow", __name__)
answer_errors_as_json(roboflow)

MAX_PROMPTS = 32
MAX_POINTS = 64


@roboflow.post("/sam2/embed_image")
def embed():
    started = time.perf_counter()
    body = json_object(request.get_json(silent=True), "embed_image")
    result, _ = embed_image(_image_bytes(body.get("image")))
    return jsonify(image_id=result.image_id, time=time.perf_counter() - started)


@roboflow.post("/sam2/segment_image")
def segment():
    started = time.perf_counter()
    body = json_object(request.get_json(silent=True), "segment_image")
    if body.get("format", "json") != "json":
        raise ToolError(400, "unsupported_format", "format must be json (outline polygons)")
    prompts = _prompts(body.get("prompts"))
    entry = _embedding(body)
    predictions = []
    for prompt in prompts:
        mask, score = predict_mask(entry, prompt)
        predictions.append({"masks": mask_polygons(mask), "confidence": score, "format": "polygon"})
    return jsonify(predictions=predictions, time=time.perf_counter() - started)


def _embedding(body: dict):
    image_id = body.get("image_id")
    if body.get("image") is None and image_id is not None:
        if not isinstance(image_id, str) or not is_valid_key(image_id):
            raise ToolError(400, "malformed_id", "image_id must be an id answered by /sam2/embed_image")
        entry = toolkit().encoder.embedding(image_id)
        if entry is None:
            raise ToolError(404, "unknown_id", "no embedding with this image_id (evicted?): send the image again")
        return entry
    result, _ = embed_image(_image_bytes(body.get("image")))
    return result.entry


def _image_bytes(image: object) -> bytes:
    if not isinstance(image, dict):
        raise ToolError(400, "missing_image", 'image must be {"type": "base64", "value": "..."}')
    if image.get("type") != "base64":
        raise ToolError(
            400,
            "unsupported_image_type",
            f"image type {shorten(image.get('type'))} is not accepted: send the image itself as base64 (this server "
            "fetches no URLs and loads no pickled arrays)",
        )
    return base64_bytes(image.get("value"), "image.value", toolkit().config.max_upload_bytes)


def _prompts(raw: object) -> list[Prompt]:
    items = raw.get("prompts") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise ToolError(400, "missing_prompts", 'prompts must be {"prompts": [{"box": ..., "points": [...]}, ...]}')
    if len(items) > MAX_PROMPTS:
        raise ToolError(413, "too_many_prompts", f"at most {MAX_PROMPTS} prompts, not {len(items)}")
    prompts = []
    for item in items:
        if not isinstance(item, dict):
            raise ToolError(400, "malformed_prompt", "each prompt must be an object with box and/or points")
        box = _box(item.get("box"))
        points, labels = _points(item.get("points"))
        prompt = Prompt(points=points, labels=labels, box=box)
        if prompt.empty:
            raise ToolError(400, "empty_prompt", "each prompt needs a box or at least one point")
        prompts.append(prompt)
    return prompts


def _box(box: object) -> np.ndarray | None:
    if box is None:
        return None
    values = [box.get(key) for key in ("x", "y", "width", "height")] if isinstance(box, dict) else None
    if values is None or not all(_number(v) for v in values):
        raise ToolError(400, "malformed_box", "box must be {x, y, width, height} (its centre and size, in pixels)")
    x, y, width, height = values
    return np.array([x - width / 2, y - height / 2, x + width / 2, y + height / 2], dtype=np.float64)


def _points(points: object) -> tuple[np.ndarray | None, np.ndarray | None]:
    if points is None:
        return None, None
    if not isinstance(points, list) or len(points) > MAX_POINTS:
        raise ToolError(400, "malformed_points", f"points must be a list of at most {MAX_POINTS} {{x, y, positive}}")
    coords, labels = [], []
    for point in points:
        if not isinstance(point, dict) or not _number(point.get("x")) or not _number(point.get("y")):
            raise ToolError(400, "malformed_points", "each point must be {x, y, positive} in pixels")
        coords.append((point["x"], point["y"]))
        labels.append(1 if point.get("positive", True) else 0)
    if not coords:
        return None, None
    return np.array(coords, dtype=np.float64), np.array(labels, dtype=np.int64)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mask_polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """The outer outline of each part of ``mask`` (holes filled, parts inside holes absorbed) as a polygon of
    integer [x, y] pixel points, simplified to within half a pixel: what Roboflow's ``format: "json"`` answers."""
    from scipy import ndimage
    from skimage import measure

    # Holes are the background parts that do not reach the border (one labelling pass; scipy's
    # binary_fill_holes dilates until it converges, seconds on a photo-sized mask).
    background, _ = ndimage.label(~np.pad(mask, 1))
    filled = (background != background[0, 0]).astype(np.float32)
    polygons = []
    for contour in measure.find_contours(filled, 0.5):
        outline = measure.approximate_polygon(contour, tolerance=0.5)
        points = np.rint(outline[:, ::-1] - 1).astype(int)  # (row, col) -> (x, y), less the padding
        if len(points) >= 3:
            polygons.append(points.tolist())
    return polygons
