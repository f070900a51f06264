"""Where the Meta-reference parity data lives. Plain Python (no pytest), so the benchmarks import it too."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_data_dir() -> Path:
    """The Meta-reference parity data: ``SAM_REFERENCE_DIR``, else ``../shared/reference`` beside the repo.

    It is never copied into the repository; only the parity tests (marker ``reference``) and the benchmarks read it.
    """
    configured = os.environ.get("SAM_REFERENCE_DIR")
    return Path(configured).resolve() if configured else (REPO_ROOT / ".." / "shared" / "reference").resolve()


REFERENCE_DIR = reference_data_dir()


def missing_reference_reason(path: Path) -> str:
    return (
        f"Meta-reference parity data not found at {path}: set SAM_REFERENCE_DIR to the folder with "
        "reduced_vit_seed0.pth, vit_t_seed0.pth and checkpoint_keys.json (see README 'Tests')"
    )
