"""Without the reference data the parity tests are skipped with the reason, and SAM_REQUIRE_REFERENCE=1 fails them."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# One parity test (reads checkpoint_keys.json) and one test of the same file that needs no reference data.
SELECTION = [
    "tests/test_checkpoints.py",
    "-k",
    "test_state_dict_matches_official_checkpoint and vit_b or unknown_model",
]


def run_pytest(tmp_path, **env):
    command = [sys.executable, "-m", "pytest", *SELECTION, "-q", "-rs", "-p", "no:cacheprovider"]
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SAM_")}
    environ.update(SAM_REFERENCE_DIR=str(tmp_path / "absent"), **env)
    return subprocess.run(command, cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=300)


def test_missing_reference_data_skips_parity_tests_with_the_reason(tmp_path):
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    assert re.search(r"\b1 passed, 1 skipped, \d+ deselected", result.stdout), result.stdout[-2000:]
    assert f"Meta-reference parity data not found at {tmp_path / 'absent'}: set SAM_REFERENCE_DIR" in result.stdout


def test_missing_reference_data_fails_when_required(tmp_path):
    result = run_pytest(tmp_path, SAM_REQUIRE_REFERENCE="1")
    assert result.returncode == 1, result.stdout[-2000:]
    assert re.search(r"\b1 passed, \d+ deselected, 1 error", result.stdout), result.stdout[-2000:]
    assert "SAM_REQUIRE_REFERENCE=1 but Meta-reference parity data not found" in result.stdout
