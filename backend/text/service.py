"""``TextService``: what the text route calls. It loads the grounder on first use (in the background, so a slow
download never holds a request past its timeout), and keeps answers per image, phrases, parameters and model.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .grounding import GroundingParameters, Instance, TextGrounder

logger = logging.getLogger(__name__)


class TextModelLoading(RuntimeError):
    """The detector is still loading (downloading); ask again in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TextUnavailable(RuntimeError):
    """No detector can run here (``transformers`` missing, a bad SAM_TEXT_MODEL)."""


class TextService:
    """``load`` returns ``(TextGrounder, info)`` where ``info`` has ``model_id``, ``weights`` and ``message``.

    ``find`` waits up to ``timeout_s`` for the first load and raises ``TextModelLoading`` past it; answers are
    kept for the ``cache_entries`` most recent distinct requests.
    """

    def __init__(
        self, load: Callable[[], tuple[TextGrounder, Any]], *, timeout_s: float = 120.0, cache_entries: int = 256
    ):
        self._load, self.timeout_s, self.cache_entries = load, timeout_s, cache_entries
        self._lock = threading.Lock()
        self._loaded = threading.Event()
        self._loader: threading.Thread | None = None
        self._grounder: TextGrounder | None = None
        self._info: Any = None
        self._error: str | None = None
        self._answers: collections.OrderedDict[tuple, list[Instance]] = collections.OrderedDict()

    def _start_loading(self) -> None:
        with self._lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._load_once, name="text-model-loader", daemon=True)
                self._loader.start()

    def _load_once(self) -> None:
        try:
            self._grounder, self._info = self._load()
        except ImportError as error:
            self._error = f"text prompts need the .[text] extra (pip install -e '.[text]'): {error}"
        except Exception as error:  # A bad SAM_TEXT_MODEL: every text request says why; the rest serves on.
            self._error = f"the text model could not be loaded: {error}"
            logger.exception("text model")
        finally:
            self._loaded.set()

    def grounder(self, timeout_s: float | None = None) -> TextGrounder:
        self._start_loading()
        if not self._loaded.wait(self.timeout_s if timeout_s is None else timeout_s):
            raise TextModelLoading("the text model is still loading (downloading on first use); try again soon", 10)
        if self._error is not None:
            raise TextUnavailable(self._error)
        return self._grounder

    def find(
        self, image_id: str, pixels: np.ndarray, phrases: list[str], params: GroundingParameters
    ) -> tuple[list[Instance], dict[str, Any]]:
        """The instances of ``phrases`` in the image, and ``{model, weights, ms, cached}`` about the answer."""
        grounder = self.grounder()
        key = (image_id, tuple(phrases), params.key(), grounder.model_id)
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key], {
                    "model": grounder.model_id,
                    "weights": grounder.weights,
                    "ms": 0.0,
                    "cached": True,
                }
        started = time.perf_counter()
        instances = grounder.ground(pixels, phrases, params)
        ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self._answers[key] = instances
            while len(self._answers) > self.cache_entries:
                self._answers.popitem(last=False)
        return instances, {"model": grounder.model_id, "weights": grounder.weights, "ms": round(ms, 1), "cached": False}

    def status(self) -> dict[str, Any]:
        """For ``/api/model``: whether text prompts are loaded and on what."""
        if not self._loaded.is_set():
            return {"loaded": False}
        if self._error is not None:
            return {"loaded": False, "error": self._error}
        return {
            "loaded": True,
            "model": self._info.model_id,
            "weights": self._info.weights,
            "message": self._info.message,
        }
