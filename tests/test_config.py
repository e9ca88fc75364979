"""The config: defaults, the example file, key-path errors, CLI overrides and check-config."""

import dataclasses
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_retrieval.cli import cli
from edge_retrieval.config import (
    Config,
    DecisionConfig,
    documented_keys,
    example_toml,
    from_dict,
    load_config,
    parse_assignment,
    to_toml,
)
from edge_retrieval.errors import ConfigError
from edge_retrieval.sinks import SinksConfig, WebhookSinkConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "edge-retrieval.toml"


def test_defaults_round_trip_through_toml():
    assert from_dict(Config, tomllib.loads(to_toml())) == Config()
    assert load_config(None) == Config()


def test_every_field_is_documented():
    from edge_retrieval.config import DecisionConfig, RoiConfig, VotesConfig
    from edge_retrieval.sinks import CommandSinkConfig, MqttSinkConfig

    classes = [Config, RoiConfig, VotesConfig, DecisionConfig, WebhookSinkConfig, MqttSinkConfig, CommandSinkConfig]
    classes += [f.default_factory for f in dataclasses.fields(Config) if f.default_factory is not dataclasses.MISSING]
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def test_the_example_file_is_current_and_holds_every_option():
    text = EXAMPLE.read_text()
    assert text == example_toml(), "regenerate systemd/edge-retrieval.toml (command in its header)"
    config = load_config(EXAMPLE)
    assert config.source.uri == "0" and config.gallery.path.startswith("/var/lib/edge-retrieval/")
    for key in documented_keys():
        last = key.rsplit(".", 1)[-1]
        assert f"\n{last} = " in text or f"\n# {last} = " in text, key
    for table in ("sinks.webhook", "sinks.mqtt", "sinks.command", "roi"):  # optional ones, commented out
        assert f"# [{table}]" in text


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[decision.votes]\nm = 7", "decision.votes.m: 7 is more than n (5)"),
        ("[decision.votes]\nk = 2", "decision.votes.k: unknown key"),
        ("[decision]\nthreshold = 'high'", "decision.threshold: expected a number"),
        ("[decision]\nthreshold = 11", "decision.threshold: 11 is above the maximum 10"),
        ("[decision]\npreset = 'best'", "decision.preset: 'best' is not one of 'default', 'quick', 'fast', 'whole'"),
        ("[decision.thresholds]\ncat = 0.8", "decision.thresholds: unknown key"),  # per-item ones live in the gallery
        ("[source]\nfps = -1", "source.fps: -1 is below the minimum 0"),
        ("[source]\nloop = 1", "source.loop: expected true or false"),
        ("[model]\nthreads = 2.5", "model.threads: expected an integer"),
        ("[roi]\nx = 0.6\nwidth = 0.5", "roi.width: the region ends at 1.1"),
        ("[sinks.webhook]\ntimeout_s = 1", "sinks.webhook.url: required"),
        ("[sinks.command]\nargv = ['ok', 3]", "sinks.command.argv[1]: expected a string"),
        (
            "[sinks.command]\nargv = ['ok']\npermanent_exit_codes = ['3']",
            "sinks.command.permanent_exit_codes[0]: expected an integer",
        ),
        (
            "[sinks.command]\nargv = ['ok']\npermanent_exit_codes = [256]",
            "sinks.command.permanent_exit_codes: 256 is not an exit status 1-255",
        ),
        ("[service]\nlog_level = 'LOUD'", "service.log_level: 'LOUD' is not one of"),
        ("camera = 0", "camera: unknown key"),
        ("source = 3", "source: expected a table"),
    ],
)
def test_errors_name_the_key_path(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_nested_optional_and_sink_dataclasses():
    config = from_dict(
        Config,
        {
            "roi": {"x": 0.25, "width": 0.5},
            "sinks": {"stdout": True, "webhook": {"url": "http://x/", "headers": {"X-A.b": "b c"}}},
        },
    )
    assert config.roi.x == 0.25 and config.roi.height == 1.0
    assert config.sinks == SinksConfig(
        stdout=True, webhook=WebhookSinkConfig(url="http://x/", headers={"X-A.b": "b c"})
    )
    assert 'headers = { "X-A.b" = "b c" }' in to_toml(config)
    assert config.decision.threshold is None and config.decision.preset == "default"
    assert from_dict(Config, tomllib.loads(to_toml(config))) == config
    assert isinstance(from_dict(DecisionConfig, {"threshold": 1}).threshold, float)  # ints are numbers


def test_overrides_beat_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[source]\nuri = "0"\nfps = 5.0\n[decision.votes]\nm = 2\n')
    config = load_config(path, {"source.fps": 2.0, "decision.votes.n": 3, "gallery.path": "g.db"})
    assert (
        config.source.uri,
        config.source.fps,
        config.decision.votes.m,
        config.decision.votes.n,
        config.gallery.path,
    ) == ("0", 2.0, 2, 3, "g.db")
    assert parse_assignment("decision.votes.m=4") == ("decision.votes.m", 4)
    assert parse_assignment("source.uri=rtsp://cam/1") == ("source.uri", "rtsp://cam/1")
    assert parse_assignment("decision.thresholds={cat=0.8}") == ("decision.thresholds", {"cat": 0.8})
    with pytest.raises(ConfigError, match="decision.votes.x: unknown key"):
        load_config(path, {"decision.votes.x": 1})


def test_check_config_show_hides_every_secret_and_keeps_the_rest(tmp_path):
    config = tmp_path / "secrets.toml"
    config.write_text(
        textwrap.dedent("""\
        [source]
        uri = "rtsp://admin:camPass1@10.0.0.5:554/stream?token=abc123"
        [sinks.webhook]
        url = "https://bob:hookPass2@hooks.example/x?key=qk987"
        headers = { Authorization = "Bearer hdr555" }
        [sinks.mqtt]
        username = "ha"
        password = "mqttPass3"
        [kiosk]
        token = "kioskTok44"
        """)
    )
    result = CliRunner().invoke(cli, ["check-config", "--show", str(config)])
    assert result.exit_code == 0, result.output
    for secret in ("camPass1", "abc123", "hookPass2", "qk987", "hdr555", "mqttPass3", "kioskTok44"):
        assert secret not in result.output
    shown = tomllib.loads(result.output)
    assert shown["source"]["uri"] == "rtsp://***@10.0.0.5:554/stream?token=***"
    assert shown["sinks"]["webhook"]["headers"] == {"Authorization": "***"}
    assert shown["sinks"]["mqtt"] == {**shown["sinks"]["mqtt"], "username": "ha", "password": "***"}
    assert shown["kiosk"]["token"] == "***"
    # no secret configured: nothing to hide, and the output loads back as the same config
    plain = CliRunner().invoke(cli, ["check-config", "--show", str(EXAMPLE)]).output
    assert "***" not in plain.split("\n", 1)[1]
    (tmp_path / "plain.toml").write_text(plain)
    assert load_config(tmp_path / "plain.toml") == load_config(EXAMPLE)


def test_check_config_command(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["check-config", str(EXAMPLE)])
    assert result.exit_code == 0 and result.output.strip().endswith(": ok")
    result = runner.invoke(cli, ["check-config", "--show", str(EXAMPLE)])
    assert result.exit_code == 0 and 'uri = "0"' in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[decision.votes]\nm = 9\n")
    result = runner.invoke(cli, ["check-config", str(bad)])
    assert result.exit_code == 1
    assert "decision.votes.m: 9 is more than n (5)" in result.stderr
    result = runner.invoke(cli, ["check-config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1 and "no such config file" in result.stderr
    bad.write_text("[source\n")
    assert "not valid TOML" in runner.invoke(cli, ["check-config", str(bad)]).stderr
