"""The web client's WebAssembly kernels under Node (web/js/*.wat): the binaries the page loads are what their
sources compile to, and the overlay's paint kernel gives exactly the pixels of the JavaScript loop (fill inside,
edge on the outline, the rest kept) on every layer and size. (mask-threshold.wat's pixels: tests/test_mask_math.py.)"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

WEB_TESTS = Path(__file__).parent / "web"
NODE = shutil.which("node")


def run_node(script: str) -> dict:
    result = subprocess.run([NODE, str(WEB_TESTS / script)], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_kernel_binaries_are_what_their_sources_compile_to():
    current = run_node("wasm_kernels.mjs")
    assert current == {"mask-paint": True, "mask-threshold": True}, (
        f"stale kernels {current}: regenerate with node tests/web/wasm_kernels.mjs --write"
    )


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_overlay_kernel_paints_the_pixels_of_the_javascript_loop():
    report = run_node("mask_paint_check.mjs")
    assert report["kernel"], "the WebAssembly kernel did not load under Node"
    assert report["mismatches"] == []
    for kind, timing in report["timings"].items():
        print(f"800 x 534, {kind} mask: JavaScript {timing['jsMs']:.2f} ms, WebAssembly {timing['wasmMs']:.2f} ms")
