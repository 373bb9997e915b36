"""The README tells the truth: every setting is documented and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from autopm_realtime.config import OPTIONS, Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_default():
    rows = {m.group(1): m.group(2, 3) for m in re.finditer(r"^\| `(--[\w-]+)` \| `(\w+)` \| ([^|]+) \|",
                                                             README, re.MULTILINE)}
    defaults = Settings()
    for option in OPTIONS:
        assert option.flag in rows, f"{option.flag} is missing from the README's configuration table"
        env, default = rows[option.flag]
        assert env == option.env
        value = getattr(defaults, option.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert float(default) == value, f"{option.flag}: README says {default}, code says {value}"


def test_ci_runs_the_readme_test_command():
    quick_start = README[README.index("## Quick start"):README.index("## Endpoints")]
    commands = re.findall(r"^(pip install .+)$", quick_start, re.MULTILINE)
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci
