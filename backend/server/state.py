"""How routes reach the app's shared state: services kept in ``app.extensions``, one accessor each."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from ..config import Config
    from ..services.decoders import DecoderChoice
    from ..services.encoder import EncoderService
    from ..services.everything import EverythingService
    from ..services.gallery import Gallery
    from ..services.memory import PixelBudget
    from ..services.weights import WeightsInfo
    from .compression import BodyCache

SAM, EVERYTHING = "sam", "everything"


@dataclasses.dataclass
class AppState:
    """What the API and static routes share: one per app (so one model per worker process)."""

    config: Config
    weights: WeightsInfo
    encoder: EncoderService
    decoders: DecoderChoice
    device: str
    precision: str
    gallery: Gallery
    ort_version: str | None
    compressed: BodyCache
    web_files: frozenset[str]
    pixel_budget: PixelBudget


def app_state() -> AppState:
    return current_app.extensions[SAM]


def everything_service() -> EverythingService:
    return current_app.extensions[EVERYTHING]
