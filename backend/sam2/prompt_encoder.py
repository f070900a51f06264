"""SAM 2's prompt encoder is SAM's, unchanged (same module, keys and maths)."""

from ..sam.prompt_encoder import PromptEncoder

__all__ = ["PromptEncoder"]
