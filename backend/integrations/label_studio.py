"""Label Studio's ML backend protocol at ``/label-studio``: the URL a user pastes into Label Studio's "Connect
model" dialog.

Label Studio appends ``/health``, ``/setup``, ``/predict``, ``/webhook`` and ``/versions`` to it. ``/health``
and ``/setup`` never touch the model (Label Studio gives them 1 s and 3 s). ``/predict`` with
``params.context`` (the smart keypoint and rectangle tools of an interactive session) turns the clicks and the
box, in percent of the image, into one SAM prompt and answers one ``brushlabels`` region in Label Studio's
brush RLE; without a context (the "Retrieve predictions" action) each ``BrushLabels`` label is grounded as a
text prompt when the server runs a text grounder, and every instance found becomes a region.

Images come from the Label Studio instance only (``label_studio_fetch``), through the page's decoding limits
and embedding cache (``toolkit``).
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import uuid
import xml.etree.ElementTree as ElementTree
from typing import Any

import numpy as np
from flask import Blueprint, jsonify, request

from ..runtime.quote import shorten
from .label_studio_fetch import fetch_image, origin_of, resolve_image_url
from .toolkit import Prompt, ToolError, answer_errors_as_json, embed_image, json_object, predict_mask, toolkit

logger = logging.getLogger(__name__)

label_studio = Blueprint("label_studio", __name__, url_prefix="/label-studio")
answer_errors_as_json(label_studio)

MAX_PROMPT_REGIONS = 64  # keypoints and boxes in one interactive request
MAX_TASKS = 64  # tasks in one pre-annotation request


class _Instance:
    """Where Label Studio is: its origin and token, from the settings or else from the last ``/setup``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._from_setup: tuple[str, str | None] | None = None

    def remember(self, hostname: object, token: object) -> None:
        origin = origin_of(hostname) if isinstance(hostname, str) else None
        if origin is not None:
            with self._lock:
                self._from_setup = (origin, token if isinstance(token, str) and token else None)

    def current(self) -> tuple[str, str | None]:
        config = toolkit().config
        if config.label_studio_url:
            return origin_of(config.label_studio_url), config.label_studio_api_key
        with self._lock:
            if self._from_setup is None:
                raise ToolError(
                    409,
                    "label_studio_unknown",
                    "this server does not know the Label Studio instance yet: set LABEL_STUDIO_URL and "
                    "LABEL_STUDIO_API_KEY, or connect the model in Label Studio (its /setup call names it)",
                )
            return self._from_setup


_instance = _Instance()


@label_studio.before_request
def _basic_auth():
    expected = toolkit().config.label_studio_basic_auth
    if not expected:
        return None
    auth = request.authorization
    given = f"{auth.username}:{auth.password}" if auth is not None and auth.type == "basic" else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ToolError(
            401,
            "unauthorized",
            "this ML backend needs HTTP basic auth (SAM_LABEL_STUDIO_BASIC_AUTH): set the same user and password in "
            "Label Studio's model settings",
            {"WWW-Authenticate": 'Basic realm="segment-anything"'},
        )
    return None


@label_studio.get("/")
@label_studio.get("/health")
def health():
    return jsonify(status="UP", model_class="SegmentAnything")


@label_studio.post("/setup")
def setup():
    body = json_object(request.get_json(silent=True), "/setup")
    _instance.remember(body.get("hostname"), body.get("access_token"))
    return jsonify(model_version=_model_version())


@label_studio.get("/versions")
def versions():
    return jsonify(versions=[_model_version()], message="")


@label_studio.post("/webhook")
def webhook():
    # Annotation events are for training backends; SAM is not trained from Label Studio.
    return jsonify(status="ignored", message="this backend does not train on annotations"), 200


@label_studio.get("/metrics")
def metrics():
    return jsonify({})


@label_studio.post("/predict")
def predict():
    body = json_object(request.get_json(silent=True), "/predict")
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(task, dict) for task in tasks):
        raise ToolError(400, "malformed_tasks", "tasks must be a non-empty list of task objects")
    if len(tasks) > MAX_TASKS:
        raise ToolError(413, "too_many_tasks", f"at most {MAX_TASKS} tasks per request, not {len(tasks)}")
    schema = parse_label_config(body.get("label_config"))
    params = body.get("params")
    context = params.get("context") if isinstance(params, dict) else None
    if context:
        return jsonify(results=[_interactive(tasks[0], schema, context)])
    if toolkit().grounder is None:
        return jsonify(
            results=[],
            message="pre-annotation needs text grounding, which this server does not run; use the smart "
            "keypoint and rectangle tools (interactive mode) instead",
        )
    return jsonify(results=[_pre_annotate(task, schema) for task in tasks])


# --- the labeling config ----------------------------------------------------------------------------------


class Schema:
    """What the answer needs from the labeling config: the ``BrushLabels`` tag (``from_name``), the ``Image`` it
    draws on (``to_name``), the task field holding the image (``image_key``) and the labels."""

    def __init__(self, from_name: str, to_name: str, image_key: str, labels: list[str]) -> None:
        self.from_name, self.to_name, self.image_key, self.labels = from_name, to_name, image_key, labels

    def label_for(self, wanted: object) -> str:
        """``wanted`` when it is one of the brush labels (the smart tool's label), else the first brush label."""
        return wanted if isinstance(wanted, str) and wanted in self.labels else self.labels[0]


def parse_label_config(text: object) -> Schema:
    if not isinstance(text, str) or not text.strip():
        raise ToolError(400, "missing_label_config", "label_config must be the project's labeling config (XML)")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise ToolError(400, "malformed_label_config", f"label_config is not valid XML: {shorten(error)}") from None
    images = {tag.get("name"): tag.get("value", "") for tag in root.iter("Image")}
    for brush in root.iter("BrushLabels"):
        to_name = brush.get("toName", "")
        value = images.get(to_name, "")
        labels = [label.get("value") for label in brush.iter("Label") if label.get("value")]
        if brush.get("name") and value.startswith("$") and labels:
            return Schema(brush.get("name"), to_name, value[1:], labels)
    raise ToolError(
        400,
        "no_brush_labels",
        'the labeling config needs a <BrushLabels> with at least one <Label> on an <Image value="$field">: '
        "this backend answers brush masks",
    )


# --- interactive: the smart tools' context ----------------------------------------------------------------


def _interactive(task: dict, schema: Schema, context: Any) -> dict:
    regions = context.get("result") if isinstance(context, dict) else None
    if not isinstance(regions, list) or not regions:
        raise ToolError(400, "malformed_context", "params.context.result must be a non-empty list of regions")
    if len(regions) > MAX_PROMPT_REGIONS:
        raise ToolError(413, "too_many_regions", f"at most {MAX_PROMPT_REGIONS} prompt regions, not {len(regions)}")
    result, _ = _task_embedding(task, schema)
    height, width = result.entry.original_size
    prompt, label = context_prompt(regions, width, height)
    mask, score = predict_mask(result.entry, prompt)
    brush = brush_region(mask, schema, schema.label_for(label), score)
    return {"result": [brush], "score": score, "model_version": _model_version()}


def context_prompt(regions: list, width: int, height: int) -> tuple[Prompt, str | None]:
    """A SAM prompt from Label Studio's context regions (percent of the image): ``keypointlabels`` are points
    (``is_positive`` keeps, otherwise leaves out), the last ``rectanglelabels`` is the box. Also the label the
    user picked for the smart tool."""
    points, labels, box, label = [], [], None, None
    for region in regions:
        if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
            raise ToolError(400, "malformed_context", "each context region must be an object with a value object")
        kind, value = region.get("type"), region["value"]
        if kind == "keypointlabels":
            x, y = _percent(value, "x") * width / 100, _percent(value, "y") * height / 100
            points.append((x, y))
            labels.append(1 if region.get("is_positive", True) in (True, 1, "true") else 0)
        elif kind == "rectanglelabels":
            x0, y0 = _percent(value, "x") * width / 100, _percent(value, "y") * height / 100
            x1, y1 = x0 + _percent(value, "width") * width / 100, y0 + _percent(value, "height") * height / 100
            box = np.array([x0, y0, x1, y1], dtype=np.float64)
        else:
            raise ToolError(
                400,
                "unsupported_region",
                f"context regions must be keypointlabels or rectanglelabels, not {shorten(kind)}",
            )
        picked = value.get(kind)
        if isinstance(picked, list) and picked and isinstance(picked[0], str):
            label = picked[0]
    prompt = Prompt(
        points=np.array(points, dtype=np.float64) if points else None,
        labels=np.array(labels, dtype=np.int64) if points else None,
        box=box,
    )
    return prompt, label


def _percent(value: dict, key: str) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ToolError(400, "malformed_context", f"value.{key} must be a number (percent of the image)")
    if not -1.0 <= number <= 101.0:
        raise ToolError(400, "malformed_context", f"value.{key} = {number:g} is outside the image (0..100 %)")
    return float(number)


# --- pre-annotation: each label grounded as text ----------------------------------------------------------


def _pre_annotate(task: dict, schema: Schema) -> dict:
    kit = toolkit()
    result, pixels = _task_embedding(task, schema)
    height, width = result.entry.original_size
    scale_x, scale_y = width / pixels.shape[1], height / pixels.shape[0]
    phrases = {label.strip().lower(): label for label in schema.labels}
    instances = kit.grounder(pixels, list(phrases))
    regions, scores = [], []
    for instance in instances:
        x0, y0, x1, y1 = instance.box
        box = np.array([x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y], dtype=np.float64)
        mask, score = predict_mask(result.entry, Prompt(box=box))
        if not mask.any():
            continue
        label = phrases.get(str(instance.label).strip().lower(), schema.labels[0])
        regions.append(brush_region(mask, schema, label, score))
        scores.append(score)
    return {"result": regions, "score": float(np.mean(scores)) if scores else 0.0, "model_version": _model_version()}


# --- shared -----------------------------------------------------------------------------------------------


def _task_embedding(task: dict, schema: Schema):
    data = task.get("data")
    if not isinstance(data, dict):
        raise ToolError(400, "malformed_tasks", "each task needs a data object")
    origin, token = _instance.current()
    url = resolve_image_url(data.get(schema.image_key), origin)
    config = toolkit().config
    body = fetch_image(url, origin, token, config.max_upload_bytes, config.request_timeout)
    return embed_image(body)


def brush_region(mask: np.ndarray, schema: Schema, label: str, score: float) -> dict:
    """One ``brushlabels`` region: the mask in Label Studio's brush RLE (RGBA bytes, the mask in every channel,
    encoded by Label Studio's own converter), with the image's size and the mask's score."""
    try:
        from label_studio_converter.brush import mask2rle  # ~1 s to import: only when a mask is answered.
    except ImportError:
        raise ToolError(
            501,
            "missing_extra",
            "brush masks for Label Studio need its converter: pip install '.[integrations]'",
        ) from None

    height, width = mask.shape
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": schema.from_name,
        "to_name": schema.to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
        "score": float(score),
        "readonly": False,
    }


def _model_version() -> str:
    return f"segment-anything-{toolkit().encoder.model_key}"
