"""web/js/mask-math.js under Node: the binary mask the client paints equals Meta's postprocessing.

Speckled logits take the path whose vertical pass runs in WebAssembly (web/js/mask-threshold.wat), so these
tests also hold that kernel to JavaScript's float64 arithmetic bit for bit.

maskFromLowRes (the folded two-resize filter with its threshold, filling runs where every source has one
sign) must give exactly upsampleLogits(...) > 0, on smooth logits and on speckled ones,
and both must agree with Sam.postprocess_masks; for SAM 2's STRETCHED frame, with SAM2Transforms.postprocess_masks.
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from backend_fixtures import vit_t_model

SCRIPT = Path(__file__).parent / "web" / "mask_math_check.mjs"
NODE = shutil.which("node")


def meta_postprocess(low_res: np.ndarray, input_size, original_size) -> np.ndarray:
    """Sam.postprocess_masks on one [256, 256] map -> logits [H, W]."""
    masks = vit_t_model().postprocess_masks(torch.from_numpy(low_res)[None, None], input_size, original_size)
    return masks[0, 0].numpy()


def blob_logits(seed: int, noise: float) -> np.ndarray:
    """Mask-like low-res logits: a few smooth blobs, positive inside, with noise (values near 0 at edges)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256].astype(np.float32)
    field = np.full((256, 256), -4.0, np.float32)
    for _ in range(4):
        cy, cx, r = rng.uniform(30, 226), rng.uniform(30, 226), rng.uniform(10, 70)
        field = np.maximum(field, 8 * (1 - np.hypot(y - cy, x - cx) / r))
    return (field + rng.normal(0, noise, field.shape)).astype(np.float32)


# (resized size in the 1024 frame, original image size): wide, tall, small (upsampling), big, odd.
CASES = [
    ((768, 1024), (768, 1024)),
    ((683, 1024), (534, 800)),
    ((1024, 576), (1280, 720)),
    ((1024, 1024), (96, 96)),
    ((640, 1024), (1200, 1920)),
    ((1024, 961), (1023, 961)),
]


def run_mask_math(tmp_path, low_res: np.ndarray, input_size, original_size) -> tuple[np.ndarray, np.ndarray, dict]:
    """maskFromLowRes and upsampleLogits of low_res under Node: mask [H, W] u8, logits [H, W], timings."""
    logits_file = tmp_path / "low.f32"
    low_res.tofile(logits_file)
    result = subprocess.run(
        [NODE, str(SCRIPT), str(logits_file), *map(str, input_size), *map(str, original_size), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    H, W = original_size
    fast = np.fromfile(tmp_path / "out.fast.u8", np.uint8).reshape(H, W)
    logits = np.fromfile(tmp_path / "out.logits.f32", np.float32).reshape(H, W)
    assert 0.05 < fast.mean() < 0.95  # a real mask with edges, not a trivial one
    np.testing.assert_array_equal(fast, (logits > 0).astype(np.uint8))
    report = json.loads(result.stdout)
    assert report["kernel"], "mask-threshold.wat did not load: the masks above came from the JavaScript fallback"
    return fast, logits, report


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("case", range(len(CASES)))
def test_mask_from_low_res_equals_the_thresholded_upsampling_and_meta(tmp_path, case):
    input_size, original_size = CASES[case]
    low_res = blob_logits(case, noise=0.7 if case % 2 else 0.05)  # speckled (random weights) or smooth
    if case == 0:
        low_res[100:140, 60:200] = 0.0  # exact zeros: not > 0, so never inside
    fast, logits, timings = run_mask_math(tmp_path, low_res, input_size, original_size)
    expected = meta_postprocess(low_res, input_size, original_size) > 0
    assert (fast.astype(bool) == expected).mean() > 0.9999
    np.testing.assert_allclose(logits, meta_postprocess(low_res, input_size, original_size), atol=1e-5)
    # The lowres graph's valid_tokens: the logits of the tokens under the image give every pixel (NaN elsewhere
    # would show), and for a landscape or portrait image that is fewer than all 64 x 64.
    cropped = np.fromfile(tmp_path / "out.cropped.f32", np.float32).reshape(original_size)
    np.testing.assert_array_equal(cropped, logits)
    assert timings["extent"] == [min(64, -(-(n + 3) // 16)) for n in input_size]
    print(
        f"{input_size} -> {original_size}: maskFromLowRes {timings['fastMs']:.2f} ms, upsampleLogits {timings['logitsMs']:.2f} ms"
    )


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("case", [0, 2, 5])
def test_speckled_logits_give_the_same_mask(tmp_path, case):
    """Logits that change sign everywhere (random weights): maskFromLowRes thresholds the whole upsampling
    instead of filling runs, and still gives exactly its pixels."""
    input_size, original_size = CASES[case]
    low_res = blob_logits(case, noise=6.0)
    fast, _, _ = run_mask_math(tmp_path, low_res, input_size, original_size)
    assert (fast.astype(bool) == (meta_postprocess(low_res, input_size, original_size) > 0)).mean() > 0.9999


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("original_size", [(534, 800), (1280, 720), (96, 96), (1023, 961)])
def test_stretched_frame_upsamples_as_sam2(tmp_path, original_size):
    """SAM 2 (STRETCHED): one bilinear resize 256 -> image, as SAM2Transforms.postprocess_masks; no crop."""
    from backend.sam2.transforms import SAM2Transforms

    low_res = blob_logits(sum(original_size), noise=0.7)
    fast, logits, _ = run_mask_math(tmp_path, low_res, ("stretched", "stretched"), original_size)
    expected = (
        SAM2Transforms(resolution=1024, mask_threshold=0.0)
        .postprocess_masks(torch.from_numpy(low_res)[None, None], original_size)[0, 0]
        .numpy()
    )
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert (fast.astype(bool) == (expected > 0)).mean() > 0.9999
