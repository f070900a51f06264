"""
The ONNX decoder files the browser downloads: exported from the loaded model at first start, cached on disk
by weights id, variant and exporter version, chosen by ``SAM_DECODER`` and listed for GET /api/model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path

import torch.nn as nn

from model_export import EXPORTER_VERSION, QUANTIZATION_RECIPES, export_decoder, quantize_decoder

from ..runtime.files import file_lock

log = logging.getLogger(__name__)

# name -> (interface, quantization recipe or None, fp32 source name); a source is listed before its quantized copy.
# lowres-quantized (the client default, SAM_DECODER) is ours: weight-only int8 per channel, the parts int8 hurts
# most in float16 (model_export/quantize.py), smaller than Meta's quantized export and within the accuracy bound
# of tests/test_quantized_decoder.py. official-quantized is built as Meta's script builds it (per-tensor uint8):
# the size and speed anchor.
BUILT_IN: dict[str, tuple] = {
    "lowres": ("lowres", None, None),
    "lowres-quantized": ("lowres", "weight-only", "lowres"),
    "official": ("official", None, None),
    "official-quantized": ("official", "meta", "official"),
}

QUANTIZED_OPS = {
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "QLinearMatMul",
    "QLinearConv",
    "DequantizeLinear",
}


class DecoderFileError(ValueError):
    """A user-supplied decoder file that is missing, unreadable or not a SAM decoder."""


def cache_key(weights_id: str) -> str:
    """A directory name for weights_id (a checkpoint hash or a description) and the exporter version."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", weights_id).strip("._") or "weights"
    if len(safe) > 64 or safe != weights_id:
        # Keep it readable but unique: different ids never share a directory.
        safe = f"{safe[:40]}-{hashlib.sha256(weights_id.encode()).hexdigest()[:16]}"
    return f"{safe}-export{EXPORTER_VERSION}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(name: str, path: Path, interface: str, quantized: bool) -> dict:
    return {
        "name": name,
        "path": path,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        "interface": interface,
        "quantized": quantized,
    }


def inspect_decoder(path: Path) -> dict:
    """Interface ("official" or "lowres") and quantization of an ONNX decoder file, from its graph."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise DecoderFileError(f"custom decoder {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for files that are not ONNX
        raise DecoderFileError(f"custom decoder {path} is not a readable ONNX model: {exc}") from exc
    inputs = {i.name for i in model.graph.input} - {init.name for init in model.graph.initializer}
    outputs = [o.name for o in model.graph.output]
    needed = {"image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"}
    if not needed <= inputs:
        raise DecoderFileError(
            f"custom decoder {path} is not a SAM decoder: its inputs {sorted(inputs)} lack {sorted(needed - inputs)}"
        )
    if "masks" in outputs and "orig_im_size" in inputs:
        interface = "official"
    elif "low_res_masks" in outputs and "iou_predictions" in outputs:
        interface = "lowres"
    else:
        raise DecoderFileError(
            f"custom decoder {path} has outputs {outputs}: expected masks, iou_predictions, low_res_masks "
            "(official) or iou_predictions, low_res_masks (lowres)"
        )
    # Meta's recipe leaves integer ops; the weight-only one int8 weights that are cast back at load.
    quantized = any(node.op_type in QUANTIZED_OPS for node in model.graph.node) or any(
        init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for init in model.graph.initializer
    )
    return {"interface": interface, "quantized": quantized}


def prepare_decoders(
    model: nn.Module, weights_id: str, cache_dir: Path, custom_decoder: Path | None = None
) -> list[dict]:
    """
    Export (once per weights_id and exporter version) and list the decoders the client may download.

    Returns dicts {name, path, bytes, sha256, interface: "official" | "lowres", quantized}: lowres,
    lowres-quantized, official (fp32, 4 masks), official-quantized, then custom_decoder (a user's ONNX file,
    e.g. from Meta's exporter) as "custom" when given. Files are written under a temporary name and renamed,
    under a lock, so processes starting together neither clash nor serve half-written files.
    """
    custom = inspect_decoder(custom_decoder) if custom_decoder is not None else None
    directory = Path(cache_dir) / cache_key(weights_id)
    paths = {name: directory / f"{name}.onnx" for name in BUILT_IN}
    if not all(path.is_file() for path in paths.values()):
        with file_lock(directory / ".lock"):
            for name, (interface, recipe, source) in BUILT_IN.items():
                if paths[name].is_file():
                    continue
                if recipe is not None:
                    log.info("quantizing the %s decoder (%s recipe)", source, recipe)
                    quantize_decoder(paths[source], paths[name], **QUANTIZATION_RECIPES[recipe])
                    continue
                log.info("exporting the %s decoder to %s", name, paths[name])
                export_decoder(model, paths[name], variant=interface)
    decoders = [
        describe(name, paths[name], interface, recipe is not None) for name, (interface, recipe, _) in BUILT_IN.items()
    ]
    if custom is not None:
        decoders.append(describe("custom", Path(custom_decoder), custom["interface"], custom["quantized"]))
    return decoders


@dataclasses.dataclass(frozen=True)
class DecoderChoice:
    """What the server offers: ``decoders`` (``prepare_decoders`` entries), the client's ``default`` name and,
    when something could not be prepared, ``error`` in plain words for the page."""

    decoders: list[dict]
    default: str | None
    error: str | None = None


def choose_decoders(model: nn.Module, weights_id: str, choice: str, cache_dir: Path) -> DecoderChoice:
    """The decoders for ``SAM_DECODER=choice`` (a built-in name or a custom file); a broken custom file falls
    back to the built-in ones, and a failed export leaves the API working (uploads, embeddings) with the
    reason in ``error``."""
    custom = None if choice in BUILT_IN else Path(choice)
    error = None
    try:
        try:
            decoders = prepare_decoders(model, weights_id, cache_dir, custom_decoder=custom)
        except Exception as custom_error:
            if custom is None:
                raise
            log.error("SAM_DECODER=%s cannot be used: %s", custom, custom_error)
            decoders = prepare_decoders(model, weights_id, cache_dir)
            error = f"SAM_DECODER={custom} cannot be used ({custom_error}); the built-in decoders are offered"
    except Exception as export_error:
        log.exception("could not prepare the ONNX decoders")
        return DecoderChoice([], None, f"the ONNX decoders could not be prepared: {export_error}")
    return DecoderChoice(decoders, default_decoder(decoders, choice), error)


def given_decoders(decoders: list[dict], choice: str) -> DecoderChoice:
    """A ready list (tests, embedding) with the default picked as for exported ones."""
    return DecoderChoice(decoders, default_decoder(decoders, choice))


def default_decoder(decoders: list[dict], choice: str) -> str | None:
    """The name the client starts with: ``choice`` when offered (a custom file: its entry), else the first."""
    names = [d["name"] for d in decoders]
    if choice in names:
        return choice
    if choice not in BUILT_IN:
        wanted = os.path.realpath(choice)
        for decoder in decoders:
            if decoder["name"] == "custom" or os.path.realpath(str(decoder["path"])) == wanted:
                return decoder["name"]
    if names:
        log.warning("SAM_DECODER=%s is not available; the client will use %s", choice, names[0])
        return names[0]
    return None


def public_decoder(decoder: dict) -> dict:
    """A decoder as ``GET /api/model`` lists it: a versioned URL instead of the server's path."""
    return {
        "name": decoder["name"],
        "url": f"/models/{decoder['name']}.onnx?v={decoder['sha256'][:16]}",
        "bytes": decoder["bytes"],
        "sha256": decoder["sha256"],
        "interface": decoder["interface"],
        "quantized": decoder["quantized"],
    }
