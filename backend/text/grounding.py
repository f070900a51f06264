"""The text-grounding seam: what any detector behind ``POST /api/images/<id>/text`` offers and takes.

A local implementation (``detectors.TransformersGrounder``) runs in this process; a remote one (another host, a
model server) only has to offer the same ``ground`` and ``model_id``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import numpy as np

MAX_TEXT_CHARS = 256
MAX_PHRASES = 16
DEFAULT_PARAMETERS = {"box_threshold": 0.35, "text_threshold": 0.25, "max_instances": 20}
MAX_INSTANCES = 100


class BadText(ValueError):
    """The text or the parameters of a request cannot be used (answered 400)."""


class GroundingFailed(RuntimeError):
    """The detector failed on one request; the service goes on serving others."""


@dataclasses.dataclass(frozen=True)
class Instance:
    """One found object: ``box`` [x0, y0, x1, y1] in image pixels (x right, y down), ``score`` in [0, 1], ``label``
    the phrase it matched."""

    box: tuple[float, float, float, float]
    score: float
    label: str

    def to_json(self) -> dict[str, Any]:
        return {"box": [round(v, 3) for v in self.box], "score": round(self.score, 5), "label": self.label}


@dataclasses.dataclass(frozen=True)
class GroundingParameters:
    """``box_threshold``: least detection score kept; ``text_threshold``: least token score for a phrase to count
    as matched (Grounding DINO); ``max_instances``: most instances answered, best first."""

    box_threshold: float = DEFAULT_PARAMETERS["box_threshold"]
    text_threshold: float = DEFAULT_PARAMETERS["text_threshold"]
    max_instances: int = DEFAULT_PARAMETERS["max_instances"]

    def key(self) -> str:
        return f"{self.box_threshold!r}/{self.text_threshold!r}/{self.max_instances}"


class TextGrounder(Protocol):
    """Finds the instances of ``phrases`` in uint8 RGB ``pixels`` [H, W, 3].

    ``model_id`` names the exact weights (answers are cached under it); ``weights`` is "real" or "random";
    ``ground`` raises ``GroundingFailed`` (or any error) for that request only.
    """

    model_id: str
    weights: str

    def ground(self, pixels: np.ndarray, phrases: list[str], params: GroundingParameters) -> list[Instance]: ...


def parse_phrases(text: object) -> list[str]:
    """``"dog, a red cat"`` -> ``["dog", "a red cat"]``: comma-separated, trimmed, lower-case, no empties or repeats.

    Raises ``BadText`` for a missing or empty text, more than ``MAX_TEXT_CHARS`` characters or more than
    ``MAX_PHRASES`` phrases.
    """
    if not isinstance(text, str) or not text.strip():
        raise BadText("the field 'text' must name what to find, e.g. 'dog, cat'")
    if len(text) > MAX_TEXT_CHARS:
        raise BadText(f"the text has {len(text):,} characters; at most {MAX_TEXT_CHARS} are taken")
    phrases: list[str] = []
    for part in text.split(","):
        phrase = " ".join(part.replace(".", " ").split()).lower()
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    if not phrases:
        raise BadText("the text has no phrase between its commas")
    if len(phrases) > MAX_PHRASES:
        raise BadText(f"the text has {len(phrases)} comma-separated phrases; at most {MAX_PHRASES} are taken")
    return phrases


def parse_parameters(raw: object) -> GroundingParameters:
    """The request's ``parameters`` object (None for the defaults) checked into ``GroundingParameters``."""
    if raw is None:
        return GroundingParameters()
    if not isinstance(raw, dict):
        raise BadText("'parameters' must be a JSON object")
    unknown = set(raw) - set(DEFAULT_PARAMETERS)
    if unknown:
        raise BadText(f"unknown parameter(s): {', '.join(sorted(str(name)[:32] for name in unknown))}")
    values = dict(DEFAULT_PARAMETERS)
    for name in ("box_threshold", "text_threshold"):
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise BadText(f"'{name}' must be a number between 0 and 1")
            if not 0 <= value <= 1:
                raise BadText(f"'{name}' must be between 0 and 1, not {value}")
            values[name] = float(value)
    if "max_instances" in raw:
        value = raw["max_instances"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INSTANCES:
            raise BadText(f"'max_instances' must be a whole number from 1 to {MAX_INSTANCES}")
        values["max_instances"] = value
    return GroundingParameters(**values)


def best_instances(instances: list[Instance], params: GroundingParameters, width: int, height: int) -> list[Instance]:
    """The ``max_instances`` best instances, boxes clipped to the image, empty boxes dropped."""
    kept = []
    for instance in sorted(instances, key=lambda item: -item.score):
        x0, y0, x1, y1 = instance.box
        box = (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height))
        if box[2] > box[0] and box[3] > box[1]:
            kept.append(dataclasses.replace(instance, box=box))
        if len(kept) == params.max_instances:
            break
    return kept
