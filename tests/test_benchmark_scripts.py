"""The benchmark scripts start: each one's ``--help`` runs from the repository root and exits 0.

They are not collected by pytest, so an import that breaks them (a moved helper, a fixture module they pull
in) would otherwise go unnoticed until someone wants a figure.
"""

import subprocess
import sys
from pathlib import Path

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
