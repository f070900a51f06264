"""Where the reference-parity data lives, and the ``reference`` marker that skips parity tests without it."""

import os
from pathlib import Path

import pytest

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


def pytest_collection_modifyitems(config, items):
    # A test that reads the reference data is a parity test, whether or not its author marked it.
    for item in items:
        if "reference_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.reference)


def pytest_runtest_setup(item):
    if item.get_closest_marker("reference") is None or REFERENCE_DIR.is_dir():
        return
    reason = missing_reference_reason(REFERENCE_DIR)
    if os.environ.get("SAM_REQUIRE_REFERENCE") == "1":
        pytest.fail(f"SAM_REQUIRE_REFERENCE=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The parity data folder (tests using it are marked ``reference`` and skipped when it is absent)."""
    return REFERENCE_DIR


# The cluster tests' session fixtures (one Ray head, one redis-server per test session), shared by every module.
from cluster_fixtures import ray_address, redis_server  # noqa: E402, F401
