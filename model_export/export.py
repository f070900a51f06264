"""Export the prompt encoder + mask decoder of a Sam model to ONNX."""

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from backend.runtime.files import atomic_write

from .lowres_model import SamLowResOnnxModel
from .mask_branch import skip_mask_branch_without_mask
from .onnx_model import SamDecoderParts, SamOnnxModel

VARIANTS = ("official", "lowres")


def use_approximate_gelu(model: nn.Module) -> None:
    """Switch every nn.GELU to the tanh approximation (cheaper on some runtimes; changes outputs slightly)."""
    for module in model.modules():
        if isinstance(module, nn.GELU):
            module.approximate = "tanh"


def example_inputs(model: SamDecoderParts, variant: str, num_points: int = 5) -> dict[str, torch.Tensor]:
    """Random inputs with the decoder's shapes: image embedding [1, C, h, w], N points, mask [1, 1, 4h, 4w]."""
    embed_dim = model.prompt_encoder.embed_dim
    embed_size = tuple(model.prompt_encoder.image_embedding_size)
    mask_input_size = [4 * x for x in embed_size]
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, generator=generator),
        "point_coords": torch.randint(0, 1024, (1, num_points, 2), generator=generator).to(torch.float32),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=generator).to(torch.float32),
        "mask_input": torch.randn(1, 1, *mask_input_size, generator=generator),
        "has_mask_input": torch.tensor([1], dtype=torch.float32),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float32),
    }
    if variant == "lowres":
        del inputs["orig_im_size"]
    return inputs


def onnx_wrapper(
    model: SamDecoderParts,
    variant: str = "official",
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
) -> nn.Module:
    """The nn.Module whose forward is the exported graph."""
    if variant == "official":
        return SamOnnxModel(
            model,
            return_single_mask=return_single_mask,
            use_stability_score=use_stability_score,
            return_extra_metrics=return_extra_metrics,
        )
    if variant == "lowres":
        if return_single_mask or use_stability_score or return_extra_metrics:
            raise ValueError(
                "the lowres variant always returns all candidates' low-res logits and predicted IoUs; "
                "--return-single-mask, --use-stability-score and --return-extra-metrics apply to the official one"
            )
        return SamLowResOnnxModel(model)
    raise ValueError(f"unknown decoder variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def output_names(variant: str, return_extra_metrics: bool = False) -> list[str]:
    if variant == "lowres":
        return ["iou_predictions", "low_res_masks"]
    if return_extra_metrics:
        return ["masks", "iou_predictions", "stability_scores", "areas", "low_res_masks"]
    return ["masks", "iou_predictions", "low_res_masks"]


def export_decoder(
    model: nn.Module,
    output: str | Path,
    variant: str = "official",
    opset: int = 17,
    return_single_mask: bool = False,
    gelu_approximate: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
) -> Path:
    """
    Write the decoder graph of `model` (a Sam) to `output` as one self-contained ONNX file.

    Only the number of points (axis 1 of point_coords and point_labels) is dynamic. The file appears
    atomically: it is written beside `output` under a temporary name and renamed.
    """
    output = Path(output)
    parts = SamDecoderParts(model)
    if gelu_approximate:
        use_approximate_gelu(parts)
    wrapper = onnx_wrapper(parts, variant, return_single_mask, use_stability_score, return_extra_metrics).eval()
    inputs = example_inputs(parts, variant)
    dynamic_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    with atomic_write(output) as tmp_path, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        with open(tmp_path, "wb") as f:
            # The TorchScript exporter gives a compact graph with a symbolic N axis that
            # onnxruntime-web loads; the dynamo exporter is slower and its output gains nothing here.
            torch.onnx.export(
                wrapper,
                tuple(inputs.values()),
                f,
                export_params=True,
                verbose=False,
                opset_version=opset,
                do_constant_folding=True,
                input_names=list(inputs.keys()),
                output_names=output_names(variant, return_extra_metrics),
                dynamic_axes=dynamic_axes,
                dynamo=False,
            )
        if variant == "lowres":
            import onnx

            graph = onnx.load(str(tmp_path))
            no_mask = parts.prompt_encoder.no_mask_embed.weight.detach().reshape(1, -1, 1, 1).numpy()
            skip_mask_branch_without_mask(graph, no_mask)
            onnx.save(graph, str(tmp_path))
    return output
