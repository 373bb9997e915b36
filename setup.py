from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "autopm_realtime" / "__init__.py").read_text(), version)

setup(
    name="autopm-realtime",
    version=version["__version__"],
    description="Real-time event hub for a software project: file changes, git snapshots, progress and "
                "risk, streamed over WebSocket and Server-Sent Events",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["autopm_realtime", "autopm_realtime.*", "jupyter_ext", "jupyter_ext.*"]),
    package_data={"autopm_realtime.web": ["static/*"]},
    install_requires=[
        "tornado>=6.4,<7",
        "watchdog>=7.1,<8",   # watcher.py hooks watchdog 7's inotify classes to notice queue overflows
        "dulwich>=1.2,<2",
    ],
    extras_require={
        "redis": ["redis>=5.0"],
        "jupyter": ["jupyter_server>=2.0,<3", "ipywidgets>=8"],
        "test": [
            "pytest>=8,<10",
            "pytest-tornasync>=0.6",
            "pytest-timeout>=2.2",
        ],
    },
    entry_points={"console_scripts": ["autopm-realtime=autopm_realtime.cli:main"]},
)
