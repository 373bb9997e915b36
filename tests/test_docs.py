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


def test_setup_py_and_the_readme_claim_the_same_pythons():
    """python_requires, the classifiers and the README agree; .ci/pythons.py checks CI tests each one."""
    setup = (ROOT / "setup.py").read_text()
    claimed = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', setup)
    minimum = re.search(r'python_requires=">=(3\.\d+)"', setup)[1]
    assert claimed and claimed[0] == minimum, (claimed, minimum)
    sentence = re.search(r"with Python ([\d., or]+), in a clone", README)
    assert sentence and re.findall(r"3\.\d+", sentence[1]) == claimed, (sentence, claimed)
