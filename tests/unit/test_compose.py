"""docker-compose.yml agrees with the code: Kafka version, ports, listeners, scripts and topics.

No Docker is needed, except for the last test, which validates the file with the
compose CLI when one is installed and is skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.cluster import KAFKA_VERSION
from fraud_pipeline.config import DEFAULT_BOOTSTRAP_SERVERS, TopicSettings, topic_settings_from_env

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
BROKERS = ("kafka1", "kafka2", "kafka3")
SCRIPT_SERVICES = {
    "payment-producer": "payment_producer.py",
    "fraud-detector": "fraud_detector.py",
    "fraud-processor": "fraud_processor.py",
    "legit-processor": "legit_processor.py",
}
# Environment variables the compose file passes to the scripts, and the TopicSettings field each sets.
TOPIC_ENV = {
    "PAYMENTS_TOPIC": "payments",
    "FRAUD_TOPIC": "fraud",
    "LEGIT_TOPIC": "legit",
    "DEAD_LETTER_TOPIC": "dead_letter",
    "TOPIC_REPLICATION_FACTOR": "replication_factor",
    "TOPIC_MIN_INSYNC_REPLICAS": "min_insync_replicas",
}
_DEFAULTED = re.compile(r"^\$\{(?P<name>\w+):-(?P<default>[^}]*)\}$")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as strings, from the mapping or the ``KEY=value`` list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "service has no command"
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def published_ports(service: dict[str, Any]) -> list[tuple[int, int]]:
    """``(host port, container port)`` pairs, from short (``[ip:]host:container``) or long syntax."""
    pairs = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            pairs.append((int(entry["published"]), int(entry["target"])))
        else:
            *_, host, container = str(entry).split("/")[0].split(":")
            pairs.append((int(host), int(container)))
    return pairs


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` as ``{NAME: (host, port)}``."""
    result = {}
    for item in value.split(","):
        name, address = item.strip().split("://")
        host, port = address.rsplit(":", 1)
        result[name] = (host, int(port))
    return result


def default_value(value: str) -> str:
    """The default of a ``${NAME:-default}`` value, or the value itself."""
    match = _DEFAULTED.match(value)
    return match["default"] if match else value


def internal_bootstrap(services: dict[str, dict[str, Any]]) -> str:
    """The brokers' inter-broker listeners, as a bootstrap list for containers."""
    endpoints = []
    for name in BROKERS:
        env = environment(services[name])
        host, port = listeners(env["KAFKA_ADVERTISED_LISTENERS"])[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
        endpoints.append(f"{host}:{port}")
    return ",".join(endpoints)


def test_brokers_run_the_kafka_version_of_the_local_cluster(services: dict[str, dict[str, Any]]) -> None:
    for name in BROKERS:
        assert services[name]["image"] == f"apache/kafka:{KAFKA_VERSION}", name


def test_broker_host_ports_are_the_default_bootstrap_servers(services: dict[str, dict[str, Any]]) -> None:
    defaults = [server.rsplit(":", 1) for server in DEFAULT_BOOTSTRAP_SERVERS.split(",")]
    assert {host for host, _ in defaults} == {"localhost"}
    expected = [int(port) for _, port in defaults]
    published = [[host for host, _ in published_ports(services[name])] for name in BROKERS]
    assert published == [[port] for port in expected]


def test_each_broker_advertises_its_published_localhost_port(services: dict[str, dict[str, Any]]) -> None:
    for name in BROKERS:
        env = environment(services[name])
        advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        bound = listeners(env["KAFKA_LISTENERS"])
        [(host_port, container_port)] = published_ports(services[name])
        [external] = [listener for listener, address in advertised.items() if address == ("localhost", host_port)]
        # The published port reaches the listener that advertises it.
        assert bound[external][1] == container_port, name
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] != external, name
        protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert set(bound) <= set(protocols), name


def test_brokers_form_one_kraft_quorum(services: dict[str, dict[str, Any]]) -> None:
    envs = {name: environment(services[name]) for name in BROKERS}
    assert [envs[name]["KAFKA_NODE_ID"] for name in BROKERS] == ["1", "2", "3"]
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    [voters] = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    expected = []
    for name, env in envs.items():
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, name
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert controller not in listeners(env["KAFKA_ADVERTISED_LISTENERS"]), name
        expected.append(f"{env['KAFKA_NODE_ID']}@{name}:{listeners(env['KAFKA_LISTENERS'])[controller][1]}")
    assert voters.split(",") == expected


def test_brokers_replicate_internal_topics_and_never_auto_create(services: dict[str, dict[str, Any]]) -> None:
    layout = TopicSettings()
    for name in BROKERS:
        env = environment(services[name])
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == str(len(BROKERS)), name
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == str(len(BROKERS)), name
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == str(layout.min_insync_replicas), name
        assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0", name
        assert "healthcheck" in services[name], name


def test_kafdrop_publishes_9000_and_reads_the_internal_listeners(services: dict[str, dict[str, Any]]) -> None:
    kafdrop = services["kafdrop"]
    assert kafdrop["image"].split(":")[0] == "obsidiandynamics/kafdrop"
    assert [host for host, _ in published_ports(kafdrop)] == [9000]
    assert environment(kafdrop)["KAFKA_BROKERCONNECT"] == internal_bootstrap(services)


def test_topics_service_runs_fraud_pipeline_topics_after_healthy_brokers(services: dict[str, dict[str, Any]]) -> None:
    topics = services["topics"]
    command = argv(topics)
    assert command[:3] == ["python", "-m", "fraud_pipeline.topics"]
    assert importlib.util.find_spec(command[2]) is not None
    assert command[command.index("--bootstrap-servers") + 1] == internal_bootstrap(services)
    assert "profiles" not in topics, "topics must run on a plain `docker compose up`"
    assert topics["build"] == "."
    assert topics["depends_on"] == {name: {"condition": "service_healthy"} for name in BROKERS}


def test_script_services_run_the_root_scripts_under_profile_pipeline(services: dict[str, dict[str, Any]]) -> None:
    in_profile = {name for name, service in services.items() if "pipeline" in (service.get("profiles") or [])}
    assert in_profile == set(SCRIPT_SERVICES)
    for name, script in SCRIPT_SERVICES.items():
        service = services[name]
        assert service["profiles"] == ["pipeline"], name
        assert argv(service) == ["python", script], name
        assert (ROOT / script).is_file(), script
        assert service["build"] == ".", name
        assert (ROOT / service["build"] / "Dockerfile").resolve() == DOCKERFILE
        assert environment(service)["KAFKA_BOOTSTRAP_SERVERS"] == internal_bootstrap(services), name
        assert service["depends_on"] == {"topics": {"condition": "service_completed_successfully"}}, name


def test_dockerfile_copies_every_script_the_compose_file_runs(services: dict[str, dict[str, Any]]) -> None:
    copied: set[str] = set()
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            copied.update(word.rstrip("/") for word in words[1:-1] if not word.startswith("--"))
    assert {"requirements.txt", "fraud_pipeline"} <= copied
    assert set(SCRIPT_SERVICES.values()) <= copied
    cmd = [line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines() if line.startswith("CMD ")]
    assert cmd == ['CMD ["python", "fraud_detector.py"]']


def test_topic_environment_defaults_are_the_codes_defaults(services: dict[str, dict[str, Any]]) -> None:
    assert set(TOPIC_ENV.values()) <= {field.name for field in fields(TopicSettings)}
    for name in ("topics", *SCRIPT_SERVICES):
        env = environment(services[name])
        assert set(TOPIC_ENV) <= set(env), name
        resolved = {key: default_value(env[key]) for key in TOPIC_ENV}
        # The defaults the compose file passes yield the code's own defaults ...
        assert topic_settings_from_env(resolved) == TopicSettings(), name
    # ... and each variable is one the code reads (changing it changes the settings).
    for key, field in TOPIC_ENV.items():
        changed = topic_settings_from_env({key: "7"})
        assert getattr(changed, field) != getattr(TopicSettings(), field), key
    assert TopicSettings().replication_factor <= len(BROKERS)


def _compose_cli() -> list[str] | None:
    """``docker compose`` if the plugin works, else ``docker-compose`` if installed, else None."""
    if shutil.which("docker"):
        try:
            probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        if probe is not None and probe.returncode == 0:
            return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI: `docker compose version` fails and no `docker-compose` binary is on PATH")
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--profile", "pipeline", "config", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, f"{' '.join(cli)} config failed:\n{result.stdout}\n{result.stderr}"
