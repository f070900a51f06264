"""The benchmark scripts start: each one's ``--help`` runs from the repository root and exits 0.

They are not collected by pytest, so an import that breaks them (a moved helper, a fixture module they pull
in) would otherwise go unnoticed until someone wants a figure.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO_ROOT / "tests" / "benchmarks").glob("bench_*.py"))


def test_every_benchmark_script_starts():
    assert SCRIPTS, "no benchmark scripts found"
    started = {
        script.name: subprocess.Popen(
            [sys.executable, str(script), "--help"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for script in SCRIPTS
    }
    failures = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=300)
        if process.returncode != 0 or b"usage" not in out.lower():
            failures[name] = err.decode(errors="replace").strip().splitlines()[-1:] or ["(no usage printed)"]
    assert not failures, failures


def test_core_handoff_prints_a_latency():
    """core_handoff.mjs (run by bench_hover.py) prints one figure in ns: two threads do hand a value over."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found")
    done = subprocess.run(
        [node, str(REPO_ROOT / "tests" / "benchmarks" / "core_handoff.mjs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # Faster than a memory round trip is impossible; slower than 0.1 ms is a broken handshake or a starved thread.
    assert 5 < float(done.stdout) < 100_000
