"""Prints the interpreters CI tests on, one a line: every Python from the oldest setup.py claims to the
newest on this machine. Exits with a message when they are not exactly the versions setup.py's classifiers
claim, so that a claim is never left untested and a tested version never left unclaimed.

Each is looked for as `python3.N` on the PATH and in pyenv's versions, and run once: a pyenv shim for a
version that is not active is on the PATH but fails when run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEWEST_MINOR_TRIED = 20


def interpreter(minor: int) -> str | None:
    """A working `python3.<minor>` with venv, or None."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python3.{minor}"),
                  *sorted(map(str, pyenv_root.glob(f"versions/3.{minor}.*/bin/python3.{minor}")), reverse=True)]
    for candidate in filter(None, candidates):
        ran = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[1])"],
                             capture_output=True, text=True)
        if ran.returncode == 0 and ran.stdout.strip() == str(minor):
            return candidate
    return None


def main() -> None:
    setup = (ROOT / "setup.py").read_text()
    required = re.search(r'python_requires=">=3\.(\d+)"', setup)
    if required is None:
        sys.exit('setup.py has no python_requires=">=3.N"')
    oldest = int(required[1])
    claimed = sorted(int(minor) for minor in re.findall(r'"Programming Language :: Python :: 3\.(\d+)"', setup))
    found = {minor: interpreter(minor) for minor in range(oldest, NEWEST_MINOR_TRIED + 1)}
    newest = max((minor for minor, path in found.items() if path), default=None)
    if newest is None:
        sys.exit(f"no Python 3.{oldest} or later on this machine (setup.py claims 3.{oldest}+)")
    tested = list(range(oldest, newest + 1))
    if claimed != tested:
        sys.exit(f"setup.py's classifiers claim Python {_versions(claimed)}, but CI tests {_versions(tested)} "
                 "(from python_requires to the newest on this machine): make them agree")
    missing = [minor for minor in tested if found[minor] is None]
    if missing:
        sys.exit(f"setup.py claims Python {_versions(missing)}, which is not on this machine to test")
    print("\n".join(str(found[minor]) for minor in tested))


def _versions(minors: list[int]) -> str:
    return ", ".join(f"3.{minor}" for minor in minors) or "none"


if __name__ == "__main__":
    main()
