"""Export the prompt encoder + mask decoder of a Sam model to ONNX."""

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from backend.runtime.files import atomic_write

from .lowres_model import PER_IMAGE_OUTPUTS, SamLowResOnnxModel
from .mask_branch import skip_mask_branch_without_mask
from .onnx_model import SamDecoderParts, SamOnnxModel
from .per_image_outputs import compute_once_per_image

VARIANTS = ("official", "lowres")


def use_approximate_gelu(model: nn.Module) -> None:
    """Switch every nn.GELU to the tanh approximation (cheaper on some runtimes; changes outputs slightly)."""
    for module in model.modules():
        if isinstance(module, nn.GELU):
            module.approximate = "tanh"


def example_inputs(
    model: SamDecoderParts, variant: str, num_points: int = 5, num_prompts: int = 1
) -> dict[str, torch.Tensor]:
    """Random inputs with the decoder's shapes: image embedding [1, C, h, w], num_prompts (lowres only) prompts
    of N points, mask [1, 1, 4h, 4w]."""
    embed_dim = model.prompt_encoder.embed_dim
    embed_size = tuple(model.prompt_encoder.image_embedding_size)
    mask_input_size = [4 * x for x in embed_size]
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, generator=generator),
        "point_coords": torch.randint(0, 1024, (num_prompts, num_points, 2), generator=generator).to(torch.float32),
        "point_labels": torch.randint(0, 4, (num_prompts, num_points), generator=generator).to(torch.float32),
        "mask_input": torch.randn(1, 1, *mask_input_size, generator=generator),
        "has_mask_input": torch.tensor([1], dtype=torch.float32),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float32),
    }
    if variant == "lowres":
        del inputs["orig_im_size"]
        # A corner smaller than the grid, so neither bound is traced as a constant.
        inputs["valid_tokens"] = torch.tensor([embed_size[0] - 5, embed_size[1] - 3], dtype=torch.int64)
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
        return ["iou_predictions", "low_res_masks", *PER_IMAGE_OUTPUTS]
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

    Only the number of points (axis 1 of point_coords and point_labels) is dynamic, and for lowres the number
    of prompts (axis 0 of the prompts and outputs; of the mask inputs, 1 or that number). The file appears
    atomically: it is written beside `output` under a temporary name and renamed.
    """
    output = Path(output)
    parts = SamDecoderParts(model)
    if gelu_approximate:
        use_approximate_gelu(parts)
    wrapper = onnx_wrapper(parts, variant, return_single_mask, use_stability_score, return_extra_metrics).eval()
    dynamic_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    if variant == "lowres":
        # Traced with two prompts, so no size of the prompt axis is taken for a constant.
        inputs = example_inputs(parts, variant, num_prompts=2)
        dynamic_axes = {
            "point_coords": {0: "num_prompts", 1: "num_points"},
            "point_labels": {0: "num_prompts", 1: "num_points"},
            "mask_input": {0: "num_masks"},
            "has_mask_input": {0: "num_masks"},
            "iou_predictions": {0: "num_prompts"},
            "low_res_masks": {0: "num_prompts", 2: "low_res_rows", 3: "low_res_cols"},
            **{name: {0: "num_masks"} for name in PER_IMAGE_OUTPUTS},
        }
    else:
        inputs = example_inputs(parts, variant)
    mask_branch = None
    if variant == "lowres":
        mask_branch = parts.prompt_encoder.no_mask_embed.weight.detach().reshape(1, -1, 1, 1).numpy()
    trace_to_onnx(
        wrapper,
        inputs,
        output,
        output_names(variant, return_extra_metrics),
        dynamic_axes,
        opset,
        no_mask_embedding=mask_branch,
        per_image_outputs=PER_IMAGE_OUTPUTS if variant == "lowres" else (),
    )
    return output


def trace_to_onnx(
    wrapper: nn.Module,
    inputs: dict[str, torch.Tensor],
    output: Path,
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
    *,
    no_mask_embedding=None,
    embedding_input: str = "image_embeddings",
    per_image_outputs: tuple[str, ...] = (),
) -> None:
    """Traces `wrapper` on `inputs` (their keys are the graph's input names) into one ONNX file at `output`,
    written atomically. With `no_mask_embedding` ([1, C, 1, 1]), the mask-prompt branch is skipped when no mask
    is given (mask_branch.py; `embedding_input` names the image embedding the branch adds to). The outputs named
    in `per_image_outputs` are then computed once per image and fed back (per_image_outputs.py)."""
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
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                dynamo=False,
            )
        if no_mask_embedding is not None:
            import onnx

            graph = onnx.load(str(tmp_path))
            skip_mask_branch_without_mask(graph, no_mask_embedding, embedding_input=embedding_input)
            if per_image_outputs:
                compute_once_per_image(graph, list(per_image_outputs))
            onnx.save(graph, str(tmp_path))
