"""
python -m model_export: export SAM's prompt encoder + mask decoder to ONNX, with the flags of Meta's
scripts/export_onnx_model.py, plus --config-json (any build_sam config) and --variant (the fast lowres graph).
"""

import argparse
import json
import sys
from pathlib import Path

from backend.sam.build import MODEL_TYPES, sam_model_registry

from .export import VARIANTS, example_inputs, export_decoder
from .quantize import decoder_session_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_export",
        description="Export the SAM prompt encoder and mask decoder to an ONNX model that runs in onnxruntime "
        "(and onnxruntime-web). The official variant has Meta's interface (inputs image_embeddings, "
        "point_coords, point_labels, mask_input, has_mask_input, orig_im_size; outputs masks, "
        "iou_predictions, low_res_masks); only the number of points is dynamic.",
        epilog="Examples:\n"
        "  python -m model_export --checkpoint sam_vit_b_01ec64.pth --model-type vit_b --output sam_b.onnx "
        "--quantize-out sam_b_q.onnx\n"
        "  python -m model_export --config-json ../shared/reference/reduced_vit_seed0_dog.json --output d.onnx\n"
        "  python -m model_export --checkpoint mobile_sam.pt --model-type vit_t --variant lowres --output fast.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, help="SAM checkpoint (.pth / .pt). May come from --config-json.")
    parser.add_argument(
        "--model-type",
        choices=MODEL_TYPES,
        help="registry model type of the checkpoint; not needed with --config-json",
    )
    parser.add_argument(
        "--config-json",
        type=Path,
        help="JSON with build_sam(**config) arguments (encoder_embed_dim, encoder_depth, encoder_num_heads, "
        "encoder_global_attn_indexes, prompt_embed_dim, image_size, patch_size, window_size, use_rel_pos, "
        "mlp_ratio), either at the top level or under a 'config' key as in the reference data's "
        "reduced_vit_seed0_dog.json. A 'checkpoint' entry there, relative to the JSON file, is used when "
        "--checkpoint is not given.",
    )
    parser.add_argument("--output", type=Path, required=True, help="the ONNX file to write")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="official",
        help="official: Meta's interface (default). lowres: the fast browser graph, inputs as official minus "
        "orig_im_size, outputs iou_predictions [1,4] and low_res_masks [1,4,256,256] (the client upsamples)",
    )
    parser.add_argument(
        "--return-single-mask",
        action="store_true",
        help="return only the best mask (K=1) instead of all four (single-mask token, then three ambiguity masks)",
    )
    parser.add_argument(
        "--opset", type=int, default=17, help="ONNX opset (default 17; at least 17 for LayerNormalization)"
    )
    parser.add_argument(
        "--quantize-out",
        type=Path,
        help="also write a uint8 dynamically quantized copy here (official: Meta's per-tensor recipe; lowres: "
        "weight-only int8 per channel, the hypernetworks' and IoU head's last layers in float)",
    )
    parser.add_argument(
        "--gelu-approximate",
        action="store_true",
        help="use the tanh approximation of GELU (for runtimes with a slow or missing erf)",
    )
    parser.add_argument(
        "--use-stability-score",
        action="store_true",
        help="replace the predicted IoU with the stability score of each mask",
    )
    parser.add_argument(
        "--return-extra-metrics",
        action="store_true",
        help="also return stability_scores and areas of the full-size masks (outputs: masks, iou_predictions, "
        "stability_scores, areas, low_res_masks)",
    )
    return parser


def load_model(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from backend.sam import build_sam

    checkpoint = args.checkpoint
    if args.config_json is not None:
        if not args.config_json.is_file():
            parser.error(f"--config-json {args.config_json} does not exist")
        try:
            data = json.loads(args.config_json.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            parser.error(f"--config-json {args.config_json} is not valid JSON: {exc}")
        if not isinstance(data, dict):
            parser.error(f"--config-json {args.config_json} must hold a JSON object")
        config = data.get("config", data)
        if checkpoint is None and isinstance(data.get("checkpoint"), str):
            checkpoint = args.config_json.parent / data["checkpoint"]
        config = {k: v for k, v in config.items() if k != "checkpoint"}
        if checkpoint is None:
            parser.error("no checkpoint: give --checkpoint (or a 'checkpoint' entry in the --config-json file)")
        if not Path(checkpoint).is_file():
            parser.error(f"checkpoint {checkpoint} does not exist")
        try:
            return build_sam(checkpoint=checkpoint, **config)
        except TypeError as exc:
            parser.error(f"--config-json {args.config_json} has an unknown build_sam argument: {exc}")
    if checkpoint is None or args.model_type is None:
        parser.error("give --checkpoint and --model-type, or --config-json")
    if not checkpoint.is_file():
        parser.error(f"checkpoint {checkpoint} does not exist")
    return sam_model_registry[args.model_type](checkpoint=checkpoint)


def check_with_onnxruntime(path: Path, model, variant: str) -> list[str]:
    """Run the exported file once in onnxruntime; returns 'name [shape]' lines."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), decoder_session_options(), providers=["CPUExecutionProvider"])
    feeds = {name: value.numpy() for name, value in example_inputs(model, variant, num_points=3).items()}
    outputs = session.run(None, feeds)
    return [f"{meta.name} {list(value.shape)}" for meta, value in zip(session.get_outputs(), outputs, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.opset < 17:
        parser.error(f"--opset {args.opset} is too old: the graphs use LayerNormalization, which needs opset 17")
    if args.variant == "lowres" and (args.return_single_mask or args.use_stability_score or args.return_extra_metrics):
        parser.error(
            "--variant lowres always returns all four candidates' low-res logits and predicted IoUs; "
            "--return-single-mask, --use-stability-score and --return-extra-metrics need --variant official"
        )

    from backend.sam import CheckpointError

    try:
        model = load_model(args, parser)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from .onnx_model import SamDecoderParts

    parts = SamDecoderParts(model)
    print(f"Exporting the {args.variant} decoder to {args.output} (opset {args.opset})...")
    export_decoder(
        parts,
        args.output,
        variant=args.variant,
        opset=args.opset,
        return_single_mask=args.return_single_mask,
        gelu_approximate=args.gelu_approximate,
        use_stability_score=args.use_stability_score,
        return_extra_metrics=args.return_extra_metrics,
    )
    print(f"Wrote {args.output} ({args.output.stat().st_size:,} bytes); onnxruntime check:")
    for line in check_with_onnxruntime(args.output, parts, args.variant):
        print(f"  {line}")
    if args.quantize_out is not None:
        from .quantize import QUANTIZATION_RECIPES, quantize_decoder

        # Meta's recipe for Meta's interface (as its script); ours (weight-only, per channel) for lowres, with the
        # attention products in integer arithmetic where the graph is numbered as the server exports it.
        recipe = "weight-only-integer-attention" if args.variant == "lowres" else "meta"
        try:
            quantize_decoder(args.output, args.quantize_out, **QUANTIZATION_RECIPES[recipe])
        except ValueError as exc:
            recipe = "weight-only"
            print(f"{exc}; they stay float")
            quantize_decoder(args.output, args.quantize_out, **QUANTIZATION_RECIPES[recipe])
        print(
            f"Wrote {args.quantize_out} ({args.quantize_out.stat().st_size:,} bytes, uint8 weights, {recipe}); check:"
        )
        for line in check_with_onnxruntime(args.quantize_out, parts, args.variant):
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
