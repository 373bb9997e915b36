"""`python -m jupyter_ext enable [--user]`: enable the Jupyter Server extension where a wheel would.

Installing the package from a wheel enables the extension by itself: the wheel carries
`etc/jupyter/jupyter_server_config.d/jupyter_ext.json`. An editable install (`pip install -e .`) does not
install data files, and since jupyter_server 2.16 `jupyter server extension enable jupyter_ext` refuses an
extension that no config file names yet ("could not be found"). This command writes the same file into
this environment's config directory (`sys.prefix/etc/jupyter`, or the user's with `--user`); from then
on `jupyter server extension list`, `enable` and `disable` work as usual.
"""

from __future__ import annotations

import argparse
import os
import sys

from jupyter_core.paths import ENV_CONFIG_PATH, jupyter_config_dir
from jupyter_server.extension.config import ExtensionConfigManager
from jupyter_server.extension.manager import ExtensionPackage

EXTENSION = "jupyter_ext"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jupyter_ext",
                                     description="Enable or disable the autopm-realtime Jupyter Server "
                                                 "extension (for editable installs; a wheel enables it).")
    parser.add_argument("action", choices=("enable", "disable"))
    parser.add_argument("--user", action="store_true",
                        help="write to the user's Jupyter config directory (JUPYTER_CONFIG_DIR) instead "
                             "of this environment's (sys.prefix/etc/jupyter, where a wheel installs it)")
    args = parser.parse_args(argv)
    config_dir = jupyter_config_dir() if args.user else ENV_CONFIG_PATH[0]
    if args.action == "enable":
        try:
            valid = ExtensionPackage(name=EXTENSION, enabled=True).validate()
        except Exception as error:   # jupyter_server reports a missing or broken module this way
            valid, reason = False, str(error)
        else:
            reason = "it has no loader"
        if not valid:
            print(f"cannot enable {EXTENSION}: {reason}", file=sys.stderr)
            return 1
    write_dir = os.path.join(config_dir, "jupyter_server_config.d")
    manager = ExtensionConfigManager(read_config_path=[config_dir], write_config_dir=write_dir)
    (manager.enable if args.action == "enable" else manager.disable)(EXTENSION)
    print(f"{EXTENSION} {args.action}d in {os.path.join(write_dir, EXTENSION + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
