from __future__ import annotations

import typing

import pytest

from fraud_pipeline import detector, topics
from fraud_pipeline.clients import CLIENTS
from fraud_pipeline.config import (
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    ClientName,
    ConnectionSettings,
    ConsumerSettings,
    DeliverySettings,
    DetectorSettings,
    Guarantee,
    MetricsSettings,
    ProcessorSettings,
    ProducerSettings,
    Settings,
    add_processor_arguments,
    build_parser,
    require,
    settings_from_args,
)
from fraud_pipeline.errors import ConfigError


def parse(argv: list[str], env: dict[str, str], *, consumes: str | None = "payments", **kw: bool) -> Settings:
    parser = build_parser("t", "d", consumes=consumes, default_group="fraud-detector", env=env, **kw)
    return settings_from_args(parser.parse_args(argv), env)


def test_defaults_are_the_original_tutorials() -> None:
    s = parse([], {})
    assert s.connection.bootstrap_servers == ("localhost:9091", "localhost:9092", "localhost:9093")
    topics = s.topics
    assert (topics.payments, topics.fraud, topics.legit) == ("payments", "fraud_payments", "legit_payments")
    consumer = require(s.consumer, "consumer")
    assert consumer.group_id == "fraud-detector"
    assert consumer.idle_timeout_s is None


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2", "FRAUD_TOPIC": "f_env", "FRAUD_DETECTOR_GROUP_ID": "g_env"}
    s = parse([], env)
    assert s.connection.bootstrap_servers == ("a:1", "b:2")
    assert s.topics.fraud == "f_env" and require(s.consumer, "consumer").group_id == "g_env"
    s = parse(["--fraud-topic", "f_flag", "--group-id", "g_flag", "--idle-timeout", "2.5", "--quiet"], env)
    assert s.topics.fraud == "f_flag" and s.consumer == ConsumerSettings("g_flag", idle_timeout_s=2.5, quiet=True)


def test_settings_are_frozen() -> None:
    s = parse([], {})
    with pytest.raises(AttributeError):
        s.create_topics = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        require(s.consumer, "consumer").quiet = True  # type: ignore[misc]


def test_each_script_gets_the_sections_of_its_flags_with_the_fields_defaults() -> None:
    """No flag given: every section equals its dataclass's defaults, so the flags' defaults are the fields' own."""
    detector = parse([], {}, transactional=True)
    assert detector.connection == ConnectionSettings() and detector.create_topics == Settings.create_topics
    assert detector.consumer == ConsumerSettings("fraud-detector")
    assert (detector.delivery, detector.detector, detector.metrics) == (DeliverySettings(), DetectorSettings(), MetricsSettings())
    assert detector.producer is None and detector.processor is None
    producer = parse([], {}, consumes=None, producer=True)
    assert producer.producer == ProducerSettings() and producer.metrics == MetricsSettings()
    assert (producer.consumer, producer.delivery, producer.detector, producer.processor) == (None, None, None, None)
    tool = parse([], {}, consumes=None)
    assert (tool.consumer, tool.producer, tool.delivery, tool.detector, tool.processor, tool.metrics) == (None,) * 6
    with pytest.raises(ValueError, match="no consumer section"):
        require(tool.consumer, "consumer")


def test_the_fraud_processors_reasons_flag_makes_its_section() -> None:
    parser = build_parser("t", "d", consumes="the fraud topic", default_group="fraud-processor", env={})
    add_processor_arguments(parser)
    assert settings_from_args(parser.parse_args([]), {}).processor == ProcessorSettings()
    assert settings_from_args(parser.parse_args(["--no-reasons"]), {}).processor == ProcessorSettings(reasons=False)


def test_environment_defaults_reach_their_sections() -> None:
    env = {"KAFKA_CLIENT": "confluent", "METRICS_PORT": "9400", "METRICS_HOST": "0.0.0.0", "COMMIT_INTERVAL_MS": "0",
           "DETECTOR_GUARANTEE": AT_LEAST_ONCE, "DETECTOR_TRANSACTIONAL_ID": "tx", "DETECTOR_RULES": "r.yaml",
           "DETECTOR_LINGER_MS": "25"}
    s = parse([], env, transactional=True)
    assert s.connection.client == "confluent" and s.metrics == MetricsSettings(9400, "0.0.0.0")
    assert require(s.consumer, "consumer").commit_interval_ms == 0
    assert s.delivery == DeliverySettings(AT_LEAST_ONCE, "tx", 25) and s.detector == DetectorSettings("r.yaml")
    assert require(parse(["--linger-ms", "0"], env, transactional=True).delivery, "delivery").linger_ms == 0
    p = parse(["--count", "5", "--rate", "0", "--seed", "3", "--accounts", "7", "--quiet"], {"PRODUCER_SCENARIOS": "default"},
              consumes=None, producer=True)
    assert p.producer == ProducerSettings(count=5, rate=0, seed=3, accounts=7, scenarios="default", quiet=True)


def test_the_literal_types_name_the_choices() -> None:
    assert typing.get_args(ClientName) == CLIENTS
    assert typing.get_args(Guarantee) == (EXACTLY_ONCE, AT_LEAST_ONCE)


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
    ({"KAFKA_CLIENT": "librdkafka"}, [], "environment variable KAFKA_CLIENT='librdkafka': one of kafka-python, confluent"),
])
def test_a_script_says_settings_that_cannot_work_in_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], argv: list[str], message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert topics.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_the_detector_refuses_a_guarantee_it_does_not_know_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DETECTOR_GUARANTEE", "twice")
    assert detector.main(["--bootstrap-servers", "localhost:1"]) == 1
    err = capsys.readouterr().err
    assert err == "error: environment variable DETECTOR_GUARANTEE='twice': one of exactly-once, at-least-once\n"


def test_a_flag_beats_a_bad_value_in_the_environment() -> None:
    env = {"KAFKA_CLIENT": "librdkafka", "DETECTOR_GUARANTEE": "twice"}
    settings = parse(["--client", "confluent", "--guarantee", "at-least-once"], env, transactional=True)
    assert settings.connection.client == "confluent"
    assert require(settings.delivery, "delivery").guarantee == "at-least-once"
