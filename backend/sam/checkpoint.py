"""Reading a checkpoint file, and saying in words what is wrong with one that cannot be used."""

import os
import zipfile
from collections.abc import Mapping
from typing import Any, Union

import torch
import torch.nn as nn

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not a SAM state_dict, or of another model type."""


def load_state_dict_file(path: PathLike) -> dict[str, torch.Tensor]:
    """Reads a state_dict saved with torch.save (tensors on CPU); CheckpointError when it cannot be used."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        found = _describe_file(path)
        if found.endswith("that torch cannot load"):
            found += f" ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        raise CheckpointError(
            f"cannot read checkpoint {path}: expected a PyTorch state_dict saved with torch.save, found {found}"
        ) from None

    # Training checkpoints sometimes nest the weights.
    if isinstance(state, Mapping) and not any(torch.is_tensor(v) for v in state.values()):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(
            f"checkpoint {path} is not a SAM state_dict: expected a mapping of parameter names to tensors, "
            f"found {_describe_object(state)}"
        )
    return dict(state)


def mismatch_message(sam: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str) -> str:
    """Which keys and shapes of state_dict do not fit sam, for the error of a strict load."""
    expected = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [
        f"{k} {list(found[k])} (expected {list(expected[k])})"
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        parts.append(f"{len(wrong)} keys with other shapes (e.g. {'; '.join(wrong[:3])})")
    return f"checkpoint {path} does not fit the model: " + ", ".join(parts or ["incompatible tensors"])


def _describe_file(path: str) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if size == 0:
        return "an empty file"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.testzip()
        except (zipfile.BadZipFile, EOFError, OSError):
            return f"a truncated or damaged zip archive of {size:,} bytes"
        return f"a zip archive of {size:,} bytes that torch cannot load"
    if head.startswith(b"\x80"):
        return f"a legacy pickle of {size:,} bytes that is truncated or damaged"
    return f"a {size:,}-byte file starting with {head!r}, not a PyTorch checkpoint"


def _describe_object(obj: Any) -> str:
    if isinstance(obj, Mapping):
        kinds = sorted({type(v).__name__ for v in obj.values()})
        return f"a mapping with {len(obj)} entries of types {', '.join(kinds) or 'none'}"
    return f"a {type(obj).__name__}"
