"""The fraud console: a live web page of the pipeline, a case queue, and Kafdrop's view of the cluster (``fraud_console.py``).

``monitor`` reads the pipeline's topics, ``latency`` the detectors' decision
latency from their metrics, ``cluster_view`` looks up brokers, topics, groups
and messages, ``casework`` keeps the case queue, labels and lists,
``accounts`` the users and their sessions, ``app`` serves the page
(``static/``) and its API.

    python fraud_console.py [--host H] [--port P] [--users FILE] [--tls-cert PEM --tls-key PEM | --trusted-proxy ADDRESS]
    python fraud_console.py adduser NAME --role viewer|analyst|admin [--users FILE] [--password-stdin]
    python fraud_console.py passwd NAME [--users FILE] [--password-stdin]
    python fraud_console.py removeuser NAME [--users FILE]

A running console reads the users file again when it changes (or on SIGHUP): a removed or changed user's sessions
end within seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..config import Settings, build_parser, non_negative_int
from ..errors import ConfigError, PipelineError
from ..rules import ORIGINAL, RuleError, RuleSet, load_ruleset
from ..runtime import cli_main, instance_slot, run_cli
from ..topics import prepare_topics
from .accounts import ROLES, User, load_users, remove_user, save_user
from .app import Guard, make_app
from .casework import CaseWork
from .cluster_view import ClusterView
from .latency import DecisionLatency, endpoint_url
from .monitor import Monitor

NAME = "fraud_console"
DEFAULT_USERS_FILE = "console-users.json"
TRANSACTIONAL_PREFIX = "fraud-console"
"""The console's transactional ids: ``fraud-console-<host>-<n>``, n the lowest slot free on the host."""
USERS_CHECK_S = 1.0
"""How often the console looks whether the users file changed."""

log = logging.getLogger(NAME)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(host: str, port: int, allowed: list[str]) -> set[str]:
    """The Host header values the console answers to: its loopback names and address, and the ones allowed."""
    names = {"127.0.0.1", "localhost", "[::1]", *allowed}
    if host not in ("0.0.0.0", "::"):
        names.add(f"[{host}]" if ":" in host else host)
    hosts = {f"{name}:{port}" for name in names if ":" not in name.strip("[]") or name.startswith("[")}
    hosts |= set(allowed)  # as given: with a port, or without one (a proxy on 80 or 443)
    if port == 80:
        hosts |= names
    return hosts


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context of the certificate chain and key given (TLS 1.2 or later); ConfigError if they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} and key {key}: {exc}") from None
    return context


def run(settings: Settings, stop: threading.Event, host: str, port: int, rules_file: str | None,
        detector_metrics: list[str] | None = None, users_file: str = DEFAULT_USERS_FILE,
        allowed_hosts: list[str] | None = None, tls: tuple[str, str] | None = None, trusted_proxy: str | None = None) -> int:
    try:
        baseline: RuleSet = ORIGINAL if rules_file is None else load_ruleset(rules_file)
    except RuleError as exc:
        raise PipelineError(f"rules file refused: {exc}") from None
    users = load_users(Path(users_file))
    if not users and not loopback(host):
        raise ConfigError(f"refusing to serve on {host} without accounts: anyone who reaches it could act as an "
                          f"analyst; add one with `fraud_console.py adduser NAME --role admin` (users file {users_file})")
    if tls is None and trusted_proxy is None and not loopback(host):
        raise ConfigError(f"refusing to serve on {host} in plain http: passwords and session cookies would cross the "
                          f"network in clear; give --tls-cert and --tls-key, or --trusted-proxy ADDRESS of the TLS "
                          f"proxy in front")
    context = tls_context(*tls) if tls is not None else None
    with instance_slot(TRANSACTIONAL_PREFIX) as slot:  # the same id after a restart: it aborts what was left open
        return _run(settings, stop, host, port, baseline, users, detector_metrics, users_file, allowed_hosts, context,
                    trusted_proxy, f"{TRANSACTIONAL_PREFIX}-{slot}")


def _run(settings: Settings, stop: threading.Event, host: str, port: int, baseline: RuleSet, users: dict[str, User],
         detector_metrics: list[str] | None, users_file: str, allowed_hosts: list[str] | None,
         context: ssl.SSLContext | None, trusted_proxy: str | None, transactional_id: str) -> int:
    # The claims topic is the console's own: made here if missing (the others come with the pipeline's scripts).
    prepare_topics(settings, reads=[settings.topics.claims], writes=[settings.topics.claims])
    monitor = Monitor(settings, baseline)
    cases = CaseWork(settings, lambda: monitor.ruleset().version, transactional_id=transactional_id)
    guard = Guard(host_names(host, port, allowed_hosts or []), users, tls=context is not None, trusted_proxy=trusted_proxy)
    view = ClusterView(settings)
    try:
        latency = DecisionLatency(detector_metrics or [])  # the flag's are checked; the environment's are not yet
    except ValueError as exc:
        raise PipelineError(f"DETECTOR_METRICS: {exc}") from None
    reader = threading.Thread(target=monitor.run, args=(stop,), name="console-monitor", daemon=True)
    reader.start()
    case_reader = threading.Thread(target=cases.run, args=(stop,), name="console-cases", daemon=True)
    case_reader.start()
    scraper = threading.Thread(target=latency.run, args=(stop,), name="console-latency", daemon=True)
    if latency.urls:
        scraper.start()
    reload = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda signum, frame: reload.set())
    watcher = threading.Thread(target=watch_users, args=(Path(users_file), guard, stop, reload), name="console-users",
                               daemon=True)
    if users:
        watcher.start()
    try:
        accounts = f"{len(users)} account(s) from {users_file}" if users else "no accounts: read-only"
        app = make_app(monitor, view, stop, latency, cases, guard)
        asyncio.run(_serve(app, host, port, stop, accounts, context))
    finally:
        stop.set()
        reader.join(10)
        case_reader.join(10)
        if latency.urls:
            scraper.join(10)
        if users:
            watcher.join(10)
        guard.hashers.shutdown(wait=False, cancel_futures=True)
        view.close()
    return 0


def watch_users(path: Path, guard: Guard, stop: threading.Event, reload: threading.Event) -> None:
    """Read the users file again when it changes (or on SIGHUP): a removed or changed user's sessions end. A file
    that cannot be read then leaves no one signed in, until it is fixed."""

    def version() -> tuple[int, int, int] | None:
        try:
            found = path.stat()
        except OSError:
            return None
        return found.st_ino, found.st_mtime_ns, found.st_size

    seen = None  # read again once at first: a change made since the console read it at start is not missed
    while not stop.wait(USERS_CHECK_S):
        now = version()
        if now == seen and not reload.is_set():
            continue
        reload.clear()
        seen = now
        try:
            users = load_users(path)
        except ConfigError as exc:
            log.error("%s: no one can sign in until it is fixed", exc)
            users = {}
        ended = guard.use_users(users)
        log.info("users file %s read again: %d account(s)%s", path, len(users),
                 f"; sessions ended for {', '.join(ended)}" if ended else "")


async def _serve(app: web.Application, host: str, port: int, stop: threading.Event, accounts: str,
                 context: ssl.SSLContext | None = None) -> None:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, ssl_context=context).start()
        except OSError as exc:
            raise PipelineError(f"cannot serve the console on {host}:{port}: {exc.strerror or exc}") from None
        scheme = "https" if context is not None else "http"
        print(f"{NAME}: {scheme}://{host}:{port}/ ({accounts}; Ctrl-C to stop)", flush=True)
        while not stop.is_set():
            await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()


def _metrics_url(text: str) -> str:
    try:
        return endpoint_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _users_parser(command: str, description: str, *, password: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{NAME} {command}", description=description)
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--users", default=os.environ.get("CONSOLE_USERS") or DEFAULT_USERS_FILE, metavar="FILE",
                        help="the users file [env CONSOLE_USERS] (default: %(default)s)")
    if password:
        parser.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    return parser


def _password(name: str, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != password:
        raise ConfigError("the passwords differ")
    return password


def _users_command(work: Callable[[], str]) -> int:
    """Run a users-file command: its line on stdout and 0, or its error on stderr and 2."""
    try:
        done = work()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(done)
    return 0


def adduser(argv: list[str]) -> int:
    """``fraud_console.py adduser NAME --role ROLE``: add or change a user in the users file."""
    parser = _users_parser("adduser", "Add a console user, or change one's role and password, in the users file "
                           "(salted scrypt hashes, mode 0600). A running console ends the sessions of a changed user.")
    parser.add_argument("--role", choices=ROLES, default="analyst",
                        help="viewer: sees; analyst: resolves cases; admin: also edits lists (default: %(default)s)")
    args = parser.parse_args(argv)

    def add() -> str:
        new = save_user(Path(args.users), args.name, args.role, _password(args.name, args.password_stdin))
        return f"{'added' if new else 'changed'} {args.name} ({args.role}) in {args.users}"

    return _users_command(add)


def passwd(argv: list[str]) -> int:
    """``fraud_console.py passwd NAME``: a new password for a user; their sessions end."""
    args = _users_parser("passwd", "Give a console user a new password; a running console ends their sessions.").parse_args(argv)

    def change() -> str:
        user = load_users(Path(args.users)).get(args.name)
        if user is None:
            raise ConfigError(f"no user {args.name!r} in {args.users}: add one with adduser")
        save_user(Path(args.users), args.name, user.role, _password(args.name, args.password_stdin))
        return f"changed the password of {args.name} in {args.users}"

    return _users_command(change)


def removeuser(argv: list[str]) -> int:
    """``fraud_console.py removeuser NAME``: remove a user; a running console ends their sessions."""
    args = _users_parser("removeuser", "Remove a console user; a running console ends their sessions within "
                         "seconds.", password=False).parse_args(argv)

    def remove() -> str:
        remove_user(Path(args.users), args.name)
        return f"removed {args.name} from {args.users}"

    return _users_command(remove)


USER_COMMANDS = {"adduser": adduser, "passwd": passwd, "removeuser": removeuser}


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in USER_COMMANDS:
        return USER_COMMANDS[argv[0]](argv[1:])
    parser = build_parser(
        NAME,
        "A live web page of the fraud pipeline (payments/s, fraud rate, alerts with their reasons, rules and "
        "their hits, dead letters, consumer lag) and Kafdrop's read-only view of the cluster (brokers, topics, "
        "consumer groups, a message browser), and the case queue where analysts resolve held payments (sign-in "
        "with --users; `fraud_console.py adduser NAME` adds one). Reads Kafka with the scripts' client settings; "
        "writes only labels, list entries and the audit trail, on an analyst's or admin's action.",
        consumes=None,
    )
    web_group = parser.add_argument_group("web")
    web_group.add_argument("--host", default="127.0.0.1",
                           help="address to serve on; 0.0.0.0 for every interface (default: %(default)s)")
    web_group.add_argument("--port", type=non_negative_int, default=8080, help="port to serve on (default: %(default)s)")
    web_group.add_argument(
        "--rules", dest="rules_file", default=os.environ.get("DETECTOR_RULES") or None, metavar="FILE",
        help="the detector's rule set file, shown as the baseline under the rules topic's changes "
        "[env DETECTOR_RULES, as the detector's] (default: the original rule, BITCOIN is fraud)",
    )
    web_group.add_argument(
        "--detector-metrics", action="append", metavar="URL", type=_metrics_url,
        default=[url.strip() for url in os.environ.get("DETECTOR_METRICS", "").split(",") if url.strip()] or None,
        help="a detector's Prometheus endpoint (its --metrics-port), e.g. http://127.0.0.1:9401/metrics: the "
        "pipeline page shows the decision latency of the detectors given; repeat for several "
        "[env DETECTOR_METRICS, comma-separated] (default: none, no latency shown)",
    )
    web_group.add_argument("--users", default=os.environ.get("CONSOLE_USERS") or DEFAULT_USERS_FILE, metavar="FILE",
                           help="the users file (`adduser` writes it); without one the console is read-only and "
                           "serves on loopback only [env CONSOLE_USERS] (default: %(default)s)")
    web_group.add_argument("--allowed-host", action="append", default=[], metavar="NAME[:PORT]",
                           help="a Host name the console also answers to (behind a proxy, or on a LAN name); "
                           "repeat for several (default: its loopback names only)")
    web_group.add_argument("--tls-cert", default=os.environ.get("CONSOLE_TLS_CERT") or None, metavar="PEM",
                           help="serve https with this certificate chain (with --tls-key); needed, or --trusted-proxy, "
                           "to serve beyond loopback [env CONSOLE_TLS_CERT] (default: http on loopback)")
    web_group.add_argument("--tls-key", default=os.environ.get("CONSOLE_TLS_KEY") or None, metavar="PEM",
                           help="the certificate's private key [env CONSOLE_TLS_KEY]")
    web_group.add_argument("--trusted-proxy", default=os.environ.get("CONSOLE_TRUSTED_PROXY") or None, metavar="ADDRESS",
                           help="the address of the TLS proxy in front: its X-Forwarded-Proto and X-Forwarded-For are "
                           "believed (from it only), so cookies are Secure and sign-ins are throttled per client "
                           "[env CONSOLE_TRUSTED_PROXY] (default: none)")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.trusted_proxy is not None:
        try:
            ipaddress.ip_address(args.trusted_proxy)
        except ValueError:
            parser.error(f"--trusted-proxy: an IP address, not {args.trusted_proxy!r}")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert is not None else None
    return run_cli(NAME, args, lambda settings, stop: run(settings, stop, args.host, args.port, args.rules_file,
                                                           args.detector_metrics, args.users, args.allowed_host,
                                                           tls, args.trusted_proxy))
