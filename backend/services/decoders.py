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
from model_export.sam2_lowres_model import export_sam2_lowres_decoder
from model_export.sam2_model import export_sam2_decoder

from ..runtime.files import file_lock

log = logging.getLogger(__name__)

# name -> (interface, quantization recipe or None, fp32 source name); a source is listed before its quantized copy.
# lowres-quantized (the client default, SAM_DECODER) is ours: weight-only int8 per channel, the parts int8 hurts
# most in float16, the attention products against the image rows in integer arithmetic (model_export/quantize.py),
# smaller than Meta's quantized export and within the accuracy bound of tests/test_quantized_decoder.py.
# official-quantized is built as Meta's script builds it (per-tensor uint8): the size and speed anchor.
BUILT_IN: dict[str, tuple] = {
    "lowres": ("lowres", None, None),
    "lowres-quantized": ("lowres", "weight-only-integer-attention", "lowres"),
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


# SAM 2's lowres graph numbers its nodes otherwise and has no prompt axis: its own list of integer products.
SAM2_RECIPES = {"weight-only-integer-attention": "weight-only-integer-attention-sam2"}


def built_in_recipe(name: str, sam2: bool) -> str | None:
    """The quantization recipe (QUANTIZATION_RECIPES) the built-in decoder `name` is made with, for a SAM 2 model
    or a SAM 1 one; None for an fp32 export."""
    recipe = BUILT_IN[name][1]
    return SAM2_RECIPES.get(recipe, recipe) if sam2 and recipe is not None else recipe


# A SAM 2 model's decoders have the same names; their interfaces take SAM 2's three image tensors
# (model_export/sam2_model.py, sam2_lowres_model.py), which the client feeds from the version-2 wire format.
SAM2_INTERFACES = {"official": "sam2-official", "lowres": "sam2-lowres"}


def is_sam2(model: nn.Module) -> bool:
    """Whether model is a SAM 2 image model (backend.sam2's SAM2Base: Meta's sam_* module names)."""
    return hasattr(model, "sam_mask_decoder")


def export_built_in(model: nn.Module, path: Path, variant: str) -> None:
    """Writes the built-in decoder `variant` ("official" or "lowres") of a SAM or SAM 2 model to path."""
    if not is_sam2(model):
        export_decoder(model, path, variant=variant)
    elif variant == "lowres":
        export_sam2_lowres_decoder(model, path)
    else:
        export_sam2_decoder(model, path)


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
    """Interface ("official", "lowres", "sam2-official" or "sam2-lowres") and quantization of an ONNX decoder
    file, from its graph."""
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
    sam2 = {"image_embed", "high_res_feats_0", "high_res_feats_1"} <= inputs
    needed = {"point_coords", "point_labels", "mask_input", "has_mask_input"} | (
        {"image_embed"} if sam2 else {"image_embeddings"}
    )
    if not needed <= inputs:
        raise DecoderFileError(
            f"custom decoder {path} is not a SAM decoder: its inputs {sorted(inputs)} lack {sorted(needed - inputs)}"
        )
    if sam2 and {"masks", "iou_predictions", "low_res_masks"} <= set(outputs):
        interface = "sam2-official"
    elif sam2 and {"iou_predictions", "low_res_masks"} <= set(outputs):
        interface = "sam2-lowres"
    elif "masks" in outputs and "orig_im_size" in inputs:
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

    Returns dicts {name, path, bytes, sha256, interface, quantized}: lowres,
    lowres-quantized, official (fp32, 4 masks), official-quantized, then custom_decoder (a user's ONNX file,
    e.g. from Meta's exporter) as "custom" when given. Interfaces are "official" | "lowres", or for a SAM 2
    model (is_sam2) "sam2-official" | "sam2-lowres" (SAM2_INTERFACES). Files are written under a temporary name and renamed,
    under a lock, so processes starting together neither clash nor serve half-written files.
    """
    custom = inspect_decoder(custom_decoder) if custom_decoder is not None else None
    if custom is not None and custom["interface"].startswith("sam2-") != is_sam2(model):
        raise DecoderFileError(
            f"custom decoder {custom_decoder} has the {custom['interface']} interface, which does not fit this "
            f"{'SAM 2' if is_sam2(model) else 'SAM'} model's embeddings"
        )
    directory = Path(cache_dir) / cache_key(weights_id)
    paths = {name: directory / f"{name}.onnx" for name in BUILT_IN}
    if not all(path.is_file() for path in paths.values()):
        with file_lock(directory / ".lock"):
            for name, (interface, _, source) in BUILT_IN.items():
                if paths[name].is_file():
                    continue
                recipe = built_in_recipe(name, is_sam2(model))
                if recipe is not None:
                    log.info("quantizing the %s decoder (%s recipe)", source, recipe)
                    quantize_decoder(paths[source], paths[name], **QUANTIZATION_RECIPES[recipe])
                    continue
                log.info("exporting the %s decoder to %s", name, paths[name])
                export_built_in(model, paths[name], interface)
    interfaces = SAM2_INTERFACES if is_sam2(model) else {name: name for name in SAM2_INTERFACES}
    decoders = [
        describe(name, paths[name], interfaces[interface], recipe is not None)
        for name, (interface, recipe, _) in BUILT_IN.items()
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
