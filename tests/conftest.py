from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The parity fixtures live beside the repository (see docs/ARCHITECTURE.md); they are never copied in.
REFERENCE_DIR = (REPO_ROOT / ".." / "shared" / "reference").resolve()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE_DIR} (expected ../shared/reference beside the repo)")
    return REFERENCE_DIR
