"""web/js/mask-paint.js under Node: the overlay's WebAssembly paint kernel gives exactly the pixels of the
JavaScript loop (fill inside, edge on the outline, the rest kept), on every layer and size, and the kernel the page
loads is the one its .wat source compiles to."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "web" / "mask_paint_check.mjs"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_overlay_kernel_paints_the_pixels_of_the_javascript_loop():
    result = subprocess.run([NODE, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(result.stdout)
    assert report["kernel"], "the WebAssembly kernel did not load under Node"
    assert not report["stale"], "web/js/mask-paint-wasm.js is not mask-paint.wat: run the script with --write"
    assert report["mismatches"] == []
    for kind, timing in report["timings"].items():
        print(f"800 x 534, {kind} mask: JavaScript {timing['jsMs']:.2f} ms, WebAssembly {timing['wasmMs']:.2f} ms")
