"""Fuzz the upload and everything endpoints with hypothesis: mutated PNG/JPEG/GIF/TIFF/WebP/BMP files and JSON
bodies, 5,000 of each by default (derandomized: the same 10,000 inputs every run), through the real app
(decoding, validation, jobs; a stand-in forward pass); prints the count by status class. Done when 5xx = 0
and the app still answers.

    python tests/benchmarks/bench_fuzz.py [--examples 5000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

from fuzzing import SEEDS, fuzz_app, run_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="inputs per endpoint")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Pillow warns about the corrupt metadata it is fed, by design.
    app, send, image_id = fuzz_app(tempfile.mkdtemp(prefix="sam-fuzz-"))
    started = time.perf_counter()
    counts = run_fuzz(send, image_id, args.examples)
    seconds = time.perf_counter() - started
    alive = (
        send("GET", "/healthz", b"", "text/plain") == 200 and send("POST", "/api/images", SEEDS[1], "image/png") == 200
    )
    print(f"inputs {counts['inputs']}  5xx {counts['5xx']}  by class {dict(sorted(counts.items()))}")
    print(f"{seconds:.0f} s ({counts['inputs'] / seconds:.0f} inputs/s); app alive afterwards: {alive}")
    app.extensions["sam"].encoder.close()
    app.extensions["everything"].close()
    return 0 if counts["5xx"] == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
