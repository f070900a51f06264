"""Where the reference-parity data lives, and the ``reference`` marker that skips parity tests without it."""

import os
from pathlib import Path

import pytest
from reference_data import REFERENCE_DIR, missing_reference_reason


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

# The tiny random text detectors (SAM_TEXT_MODEL folders), built once per session.
from text_fixtures import grounding_dino_folder, owlv2_folder  # noqa: E402, F401
