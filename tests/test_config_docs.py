"""The README's settings table is the one generated from backend/config.py (one home for each setting)."""

import re
import subprocess
import sys
from pathlib import Path

from backend.config import Config, config_table, env_name

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_is_generated_from_config():
    text = README.read_text()
    match = re.search(r"<!-- config-table:[^\n]*-->\n(.*?)<!-- /config-table -->", text, re.S)
    assert match, "README lost its config-table markers"
    assert match.group(1) == config_table(), "README settings table is stale: paste `python -m backend config-table`"


def test_every_setting_has_a_row_and_a_help_text():
    table = config_table()
    for name in Config.__dataclass_fields__:
        assert f"| `{env_name(name)}` |" in table
        assert Config.__dataclass_fields__[name].metadata["help"].strip()


def test_cli_prints_the_table():
    out = subprocess.run(
        [sys.executable, "-m", "backend", "config-table"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out == config_table()
