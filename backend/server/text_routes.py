"""The text-prompt route (full /api path), over the ``TextService`` registered with the app.

POST /api/images/<image_id>/text   multipart {text, parameters?: JSON, image: the uploaded file}
                                   -> {instances: [{box: [x0, y0, x1, y1] image pixels, score, label}], model, ms}

The server keeps no pixels after encoding, so the page sends the image again (as for everything mode's crop
layers); it must be the image ``image_id`` names.
"""

from __future__ import annotations

import json

from flask import Blueprint, Flask, current_app, jsonify, request

from ..runtime.quote import shorten
from ..services.images import ImageError, decode_image
from ..services.memory import OverBudget
from ..services.model_runner import INPUT_SIDE
from ..text.grounding import BadText, GroundingFailed, parse_parameters, parse_phrases
from ..text.service import TextModelLoading, TextService, TextUnavailable
from .errors import ApiError
from .state import TEXT, app_state

text = Blueprint("text", __name__)
# Three numbers: a longer parameters field is not a parameter object.
MAX_PARAMETERS_BYTES = 1024


def register_text(app: Flask, service: TextService) -> None:
    app.extensions[TEXT] = service
    app.register_blueprint(text)


def _parameters():
    raw = request.form.get("parameters") or ""
    if len(raw.encode()) > MAX_PARAMETERS_BYTES:
        raise BadText(f"'parameters' must be a JSON object of at most {MAX_PARAMETERS_BYTES} bytes")
    if not raw.strip():
        return parse_parameters(None)
    try:
        return parse_parameters(json.loads(raw))
    except (ValueError, RecursionError) as error:
        if isinstance(error, BadText):
            raise
        raise BadText("'parameters' must be a JSON object") from None


def _image(image_id: str):
    """The sent image decoded as an upload is (downscaled to the encoder's side, so its id is the upload's), and
    the factor from those pixels back to the upload's."""
    upload = request.files.get("image")
    if upload is None:
        raise ApiError(400, "missing_image", "a text request needs the image in a multipart field named 'image'")
    state = app_state()
    try:
        decoded = decode_image(
            upload.read(), state.config.max_pixels, longest_side=INPUT_SIDE, reserve=state.pixel_budget.reserve
        )
    except ImageError as error:
        raise ApiError(error.status, error.code, error.message) from None
    except OverBudget as error:
        raise ApiError(503, "decoder_busy", str(error), {"Retry-After": str(error.retry_after)}) from None
    if state.encoder.image_id(decoded.pixels, original_size=decoded.original_size) != image_id:
        raise ApiError(400, "image_mismatch", f"the image sent is not the one with id {shorten(image_id)!r}")
    height = decoded.pixels.shape[0]
    scale = (decoded.original_size[0] / height) if decoded.original_size else 1.0
    return decoded.pixels, scale


@text.post("/api/images/<image_id>/text")
def find(image_id: str):
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with fields text, parameters, image")
    try:
        phrases = parse_phrases(request.form.get("text"))
        params = _parameters()
    except BadText as error:
        raise ApiError(400, "bad_text", str(error)) from None
    pixels, scale = _image(image_id)
    service: TextService = current_app.extensions[TEXT]
    try:
        instances, about = service.find(image_id, pixels, phrases, params)
    except TextModelLoading as error:
        raise ApiError(503, "text_model_loading", str(error), {"Retry-After": str(error.retry_after)}) from None
    except TextUnavailable as error:
        raise ApiError(501, "text_unavailable", str(error)) from None
    except GroundingFailed as error:
        current_app.logger.exception("text detector failed on %s", shorten(image_id))
        raise ApiError(500, "detector_failed", shorten(str(error), 300)) from None
    answer = []
    for instance in instances:
        item = instance.to_json()
        item["box"] = [round(value * scale, 3) for value in instance.box]
        answer.append(item)
    return jsonify(instances=answer, phrases=phrases, **about)
