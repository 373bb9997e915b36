"""Prints pip constraints that pin each runtime requirement of the installed autopm-realtime to the lowest
version its specifier allows (`>=X` becomes `==X`), for the lowest-direct check in .ci/fast-suite.

Runtime means install_requires and the extras a user installs to run the server (RUNTIME_EXTRAS); the
test, bench and lab tools are left to pip. A runtime requirement without a `>=` lower bound is an error:
nothing would test the oldest release it admits.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

RUNTIME_EXTRAS = ("redis", "jupyter")
REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*(?P<specifier>[^;]*)(?:;(?P<marker>.*))?")


def lowest_constraints(requirements: list[str]) -> list[str]:
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = REQUIREMENT.fullmatch(requirement.strip())
        if match is None:
            sys.exit(f"cannot read the requirement {requirement!r}")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", match["marker"] or "")
        if extra and extra[1] not in RUNTIME_EXTRAS:
            continue
        lower = re.search(r">=\s*([^,\s]+)", match["specifier"])
        if lower is None:
            sys.exit(f"{requirement}: a runtime requirement needs a '>=' lower bound for the lowest-direct check")
        pins[match["name"].lower()] = lower[1]
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


if __name__ == "__main__":
    print("\n".join(lowest_constraints(metadata.requires("autopm-realtime") or [])))
