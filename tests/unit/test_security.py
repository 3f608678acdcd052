"""Client security settings: the properties file, the environment, the flags, and what each client library receives."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraud_pipeline.clients import confluent, kafka_python
from fraud_pipeline.config import Settings, build_parser, settings_from_args
from fraud_pipeline.security import Secret, Security, SecurityConfigError

CONFLUENT_CLOUD = """\
# Required connection configs for Kafka producer, consumer, and admin
bootstrap.servers=pkc-abc12.eu-west-1.aws.confluent.cloud:9092
security.protocol=SASL_SSL
sasl.mechanisms=PLAIN
sasl.username=KEY123
sasl.password=s3cr3t/with=signs
"""

JAVA_FORM = """\
bootstrap.servers=b-1.msk.example.com:9096
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\
    username="alice" password="pa ss";
"""


def settings(argv: list[str], env: dict[str, str]) -> Settings:
    parser = build_parser("t", "d", consumes="payments", default_group="g", env=env)
    return settings_from_args(parser.parse_args(argv), env)


def write(tmp_path: Path, text: str, name: str = "client.properties") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_confluent_cloud_file_gives_servers_and_credentials(tmp_path: Path) -> None:
    s = settings(["--client-config", write(tmp_path, CONFLUENT_CLOUD)], {})
    assert s.connection.bootstrap_servers == ("pkc-abc12.eu-west-1.aws.confluent.cloud:9092",)
    security = s.connection.security
    assert (security.protocol, security.sasl_mechanism, security.sasl_username) == ("SASL_SSL", "PLAIN", "KEY123")
    assert s.connection.security.sasl_password is not None and s.connection.security.sasl_password.reveal() == "s3cr3t/with=signs"
    assert s.connection.security.ssl_check_hostname


def test_the_java_jaas_form_and_continuation_lines_are_read(tmp_path: Path) -> None:
    s = settings([], {"KAFKA_CLIENT_CONFIG": write(tmp_path, JAVA_FORM)})
    assert (s.connection.security.sasl_mechanism, s.connection.security.sasl_username) == ("SCRAM-SHA-512", "alice")
    assert s.connection.security.sasl_password is not None and s.connection.security.sasl_password.reveal() == "pa ss"


def test_environment_beats_the_file_and_a_flag_beats_both(tmp_path: Path) -> None:
    path = write(tmp_path, CONFLUENT_CLOUD)
    env = {"KAFKA_CLIENT_CONFIG": path, "KAFKA_SASL_USERNAME": "env-user", "KAFKA_SASL_PASSWORD": "env-pass",
           "KAFKA_BOOTSTRAP_SERVERS": "env:1"}
    s = settings([], env)
    assert s.connection.security.sasl_username == "env-user" and s.connection.bootstrap_servers == ("env:1",)
    assert s.connection.security.sasl_password is not None and s.connection.security.sasl_password.reveal() == "env-pass"
    s = settings(["--sasl-username", "flag-user", "--bootstrap-servers", "flag:1"], env)
    assert s.connection.security.sasl_username == "flag-user" and s.connection.bootstrap_servers == ("flag:1",)


def test_no_file_means_plaintext_to_the_tutorials_brokers() -> None:
    s = settings([], {})
    assert s.connection.security == Security() and s.connection.security.protocol == "PLAINTEXT"
    assert s.connection.bootstrap_servers == ("localhost:9091", "localhost:9092", "localhost:9093")


@pytest.mark.parametrize(("text", "message"), [
    ("session.timeout.ms=45000\n", "unsupported key 'session.timeout.ms'"),
    ("security.protocol=SASL_SSL\nsasl.mechanism=GSSAPI\nsasl.username=u\nsasl.password=p\n", "'GSSAPI' is not supported"),
    ("security.protocol=TLS\n", "'TLS' is not one of"),
    ("security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.username=u\n", "needs sasl.password"),
    ("sasl.username=u\nsasl.password=p\n", "but security.protocol is PLAINTEXT"),
    ("security.protocol=SSL\nssl.ca.location=/nonexistent/ca.pem\n", "no such file: /nonexistent/ca.pem"),
    ("security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.jaas.config=x required;\n", "no username"),
    ("=value without a key\n", "expected key=value"),
])
def test_a_bad_file_is_refused_naming_the_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    with pytest.raises(SecurityConfigError) as exc:
        settings(["--client-config", write(tmp_path, text)], {})
    assert message in str(exc.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SecurityConfigError, match=r"cannot read the client config file .*nope\.properties"):
        settings(["--client-config", str(tmp_path / "nope.properties")], {})


def test_there_is_no_password_flag() -> None:
    parser = build_parser("t", "d", consumes="payments", default_group="g", env={})
    flags = {opt for action in parser._actions for opt in action.option_strings}
    assert not {f for f in flags if "password" in f}
    with pytest.raises(SystemExit):
        parser.parse_args(["--sasl-password", "x"])


def test_passwords_never_print(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = settings(["--client-config", write(tmp_path, CONFLUENT_CLOUD)], {})
    password = "s3cr3t/with=signs"
    logged = "%s" % s.connection.security.sasl_password  # noqa: UP031  (as logging formats its arguments)
    for text in (repr(s), str(s.connection.security), f"{s.connection.security.sasl_password}", logged, s.connection.security.describe()):
        assert password not in text
    assert s.connection.security.describe() == "SASL_SSL PLAIN user KEY123"
    parser = build_parser("t", "d", consumes="payments", default_group="g", env={"KAFKA_SASL_PASSWORD": password})
    assert password not in parser.format_help()


def test_each_client_gets_the_settings_in_its_own_names(tmp_path: Path) -> None:
    ca = write(tmp_path, "-----BEGIN CERTIFICATE-----\n", "ca.pem")
    security = Security("SASL_SSL", "SCRAM-SHA-512", "alice", Secret("pw"), ssl_ca_location=ca, ssl_check_hostname=False)
    assert kafka_python.security_config(security) == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "alice",
        "sasl_plain_password": "pw", "ssl_cafile": ca, "ssl_certfile": None, "ssl_keyfile": None,
        "ssl_check_hostname": False, "ssl_password": None,
    }
    assert confluent.security_config(security) == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alice", "sasl.password": "pw",
        "ssl.ca.location": ca, "ssl.endpoint.identification.algorithm": "none",
    }
    assert type(confluent.security_config(security)["sasl.password"]) is str  # the library gets the text, not the mask
    assert kafka_python.security_config(Security()) == {"security_protocol": "PLAINTEXT"}
    assert confluent.security_config(Security()) == {"security.protocol": "PLAINTEXT"}
