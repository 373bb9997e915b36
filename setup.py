from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "autopm_realtime" / "__init__.py").read_text(), version)

# jupyter_server 2.16 calls ExtensionApp._start_jupyter_server_extension, where the extension starts its
# service (before it, the extension loaded but never served); 2.13 brought @ws_authenticated and
# ServerApp.allow_unauthenticated_access. ipykernel 6.0.0 was yanked (its metadata lacks a dependency).
JUPYTER = ["jupyter_server>=2.16,<3", "ipywidgets>=8", "ipykernel>=6.5"]
# The peer servers bench/compare.py measures ours against (bench/peers/).
BENCH_PEERS = ["websockets>=14,<18", "sse-starlette>=3,<4", "uvicorn>=0.30"]

setup(
    name="autopm-realtime",
    version=version["__version__"],
    description="Real-time event hub for a software project: file changes, git snapshots, progress and "
                "risk, streamed over WebSocket and Server-Sent Events",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # The oldest and newest Pythons here are the ones .ci/run tests on (watchdog 7 and tornado 6.6 need 3.11).
    python_requires=">=3.11",
    license="MIT",
    license_files=["LICENSE"],
    author="The autopm-realtime maintainers",
    url="https://github.com/autopm-realtime/autopm-realtime",
    project_urls={
        "Documentation": "https://github.com/autopm-realtime/autopm-realtime/tree/main/docs",
        "Changelog": "https://github.com/autopm-realtime/autopm-realtime/blob/main/CHANGELOG.md",
        "Issues": "https://github.com/autopm-realtime/autopm-realtime/issues",
    },
    keywords=["websocket", "server-sent events", "sse", "real-time", "dashboard", "tornado", "jupyter",
              "git", "file watcher", "project management"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: Web Environment",
        "Framework :: Jupyter",
        "Framework :: Tornado",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
        "Topic :: Software Development :: Version Control :: Git",
        "Topic :: System :: Monitoring",
    ],
    packages=find_packages(include=["autopm_realtime", "autopm_realtime.*", "jupyter_ext", "jupyter_ext.*"]),
    package_data={"autopm_realtime.web": ["static/*"]},
    # Enables the Jupyter Server extension on install (`jupyter server extension list` shows it). An
    # editable install may skip data files: then run `python -m jupyter_ext enable` (docs/jupyter.md).
    data_files=[("etc/jupyter/jupyter_server_config.d",
                 ["jupyter-config/jupyter_server_config.d/jupyter_ext.json"])],
    install_requires=[
        "tornado>=6.4,<7",
        "watchdog>=7.1,<8",   # watcher.py hooks watchdog 7's inotify classes to notice queue overflows
        "dulwich>=1.2.19,<2",   # 1.2.19: dulwich.index.unchanged_entry_flags and IndexChecksumReader (snapshot.py)
        # 2.14: a token with a bad base64 segment is a DecodeError and deep JSON nesting no RecursionError
        # (2.11 brought the Algorithm.check_key_length that tokens.py refuses weak keys with)
        "PyJWT[crypto]>=2.14,<3",
        "prometheus-client>=0.20",
    ],
    extras_require={
        "redis": ["redis>=5.0.8"],   # 5.0.8: the first command after Redis restarts reconnects (5.0.7 failed it)
        "jupyter": JUPYTER,
        "bench": BENCH_PEERS,
        "test": [
            "pytest>=8,<10",
            "pytest-tornasync>=0.6",
            "pytest-timeout>=2.2",
            *JUPYTER,   # tests/test_jupyter_ext.py runs a real `jupyter server`
            "nbclient>=0.7", "nbformat>=5.1",   # tests/test_notebooks.py executes the notebooks
            "playwright>=1.40",   # tests/test_dashboard.py drives Debian's chromium (see .ci/run)
            "redis>=5.0.8",       # the Redis broker's tests run against a real Redis (see .ci/run)
            "hypothesis>=6.100",  # the fuzz and index property tests
            *BENCH_PEERS,         # tests/test_bench.py runs bench/compare.py --quick, peers included
        ],
    },
    entry_points={"console_scripts": ["autopm-realtime=autopm_realtime.cli:main"]},
)
