from __future__ import annotations

import pytest

from fraud_pipeline import topics
from fraud_pipeline.config import build_parser, settings_from_args
from fraud_pipeline.errors import ConfigError


def parse(argv: list[str], env: dict[str, str], **kw: object) -> object:
    parser = build_parser("t", "d", consumes="payments", default_group="fraud-detector", env=env, **kw)  # type: ignore[arg-type]
    return settings_from_args(parser.parse_args(argv), env)


def test_defaults_are_the_original_tutorials() -> None:
    s = parse([], {})
    assert s.bootstrap_servers == ("localhost:9091", "localhost:9092", "localhost:9093")  # type: ignore[attr-defined]
    topics = s.topics  # type: ignore[attr-defined]
    assert (topics.payments, topics.fraud, topics.legit) == ("payments", "fraud_payments", "legit_payments")
    assert s.group_id == "fraud-detector"  # type: ignore[attr-defined]
    assert s.idle_timeout_s is None  # type: ignore[attr-defined]


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2", "FRAUD_TOPIC": "f_env", "FRAUD_DETECTOR_GROUP_ID": "g_env"}
    s = parse([], env)
    assert s.bootstrap_servers == ("a:1", "b:2")  # type: ignore[attr-defined]
    assert s.topics.fraud == "f_env" and s.group_id == "g_env"  # type: ignore[attr-defined]
    s = parse(["--fraud-topic", "f_flag", "--group-id", "g_flag", "--idle-timeout", "2.5", "--quiet"], env)
    assert s.topics.fraud == "f_flag" and s.group_id == "g_flag"  # type: ignore[attr-defined]
    assert s.idle_timeout_s == 2.5 and s.quiet  # type: ignore[attr-defined]


def test_settings_are_frozen() -> None:
    s = parse([], {})
    with pytest.raises(AttributeError):
        s.quiet = True  # type: ignore[attr-defined]


def test_bad_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--idle-timeout", "0"], {})
    assert "must be > 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="TOPIC_REPLICATION_FACTOR"):
        parse([], {"TOPIC_REPLICATION_FACTOR": "three"})


@pytest.mark.parametrize(("env", "argv", "message"), [
    ({"TOPIC_REPLICATION_FACTOR": "three"}, [], "environment variable TOPIC_REPLICATION_FACTOR='three' is not an integer"),
    ({}, ["--bootstrap-servers", " , "], "--bootstrap-servers is empty"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, [], "KAFKA_SECURITY_PROTOCOL: security.protocol 'TLS' is not one of"),
])
def test_a_script_says_settings_that_cannot_work_in_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], argv: list[str], message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert topics.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
