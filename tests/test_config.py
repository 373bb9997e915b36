"""Settings from flags and environment, and the refusals that keep users safe."""

from __future__ import annotations

import argparse

import pytest

from autopm_realtime.config import ConfigError, OPTIONS, Settings, add_serve_arguments, settings_from


def parse(argv, environ=None):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(argv), environ or {})


def test_defaults_serve_the_current_directory_on_loopback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = parse([])
    assert (settings.host, settings.port, settings.heartbeat, settings.history) == ("127.0.0.1", 8000, 30.0,
                                                                                   10_000)
    [project] = settings.projects
    assert project.path == tmp_path and project.id == tmp_path.name


def test_project_with_explicit_id(tmp_path):
    settings = parse(["--project", f"{tmp_path}=web-app", "--project", str(tmp_path / ".")])
    assert [p.id for p in settings.projects] == ["web-app", tmp_path.name]


def test_flags_beat_environment_which_beats_defaults(tmp_path):
    environ = {"AUTOPM_PORT": "9001", "AUTOPM_HEARTBEAT": "5", "AUTOPM_CORS_ORIGINS": "https://a, https://b",
               "AUTOPM_PROJECTS": str(tmp_path), "AUTOPM_EVENT_TYPES": "deploy:environment,version;audit"}
    settings = parse(["--port", "9002"], environ)
    assert settings.port == 9002 and settings.heartbeat == 5.0
    assert settings.cors_origins == ("https://a", "https://b")
    assert settings.event_types == ("deploy:environment,version", "audit")


@pytest.mark.parametrize("argv, environ, fragment", [
    (["--host", "0.0.0.0"], {}, "refusing to bind 0.0.0.0"),
    (["--host", "192.168.1.5"], {}, "--insecure"),
    (["--heartbeat", "0"], {}, "--heartbeat must be positive"),
    (["--port", "70000"], {}, "must be 0-65535"),
    (["--project", "/does/not/exist"], {}, "is not a directory"),
    ([], {"AUTOPM_PORT": "eighty"}, "AUTOPM_PORT='eighty'"),
    ([], {"AUTOPM_INSECURE": "maybe"}, "AUTOPM_INSECURE"),
    (["--event-type", "heartbeat"], {}, "--event-type: invalid event type name 'heartbeat'"),
    (["--event-type", "deploy", "--event-type", "deploy"], {}, "registered twice"),
    (["--queue-max-bytes", "1000"], {}, "at least twice --max-event-bytes"),
    (["--write-interval-ms", "-1"], {}, "--write-interval-ms must be 0 or more"),
    (["--watch-start-timeout", "-1"], {}, "--watch-start-timeout must be 0 or more"),
    (["--max-connections", "0"], {}, "--max-connections must be positive"),
    (["--workers", "2"], {}, "--workers 2 needs --broker redis://"),
    (["--broker", "kafka://x"], {}, "use memory or a redis://"),
    (["--jwt-secret", "short"], {}, "below the minimum recommended length"),
    (["--jwt-audience", "a"], {}, "need --jwt-secret or --jwt-public-key"),
    (["--jwt-secret", "s" * 40, "--jwt-public-key", "k.pem"], {}, "not both"),
    (["--jwt-public-key", "/no/such.pem"], {}, "no such file"),
])
def test_refusals_say_what_to_change(argv, environ, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("-", r"\-")):
        parse(argv + ["--project", str(tmp_path)] if "--project" not in argv else argv, environ)


def test_duplicate_project_ids_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ConfigError, match="share the id"):
        parse(["--project", f"{tmp_path}=x", "--project", f"{tmp_path / 'a'}=x"])


@pytest.mark.parametrize("argv", [["--host", "0.0.0.0", "--publish-token", "t"],
                                  ["--host", "0.0.0.0", "--insecure"], ["--host", "::1"],
                                  ["--host", "localhost"]])
def test_public_bind_allowed_with_token_or_insecure(argv, tmp_path):
    assert parse(argv + ["--project", str(tmp_path)]).host == argv[1]


def test_every_setting_has_an_option():
    """A setting without a flag could not be changed; the README table is made from OPTIONS."""
    assert sorted(o.name for o in OPTIONS) == sorted(Settings.__dataclass_fields__)
