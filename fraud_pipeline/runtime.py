"""Process plumbing shared by the scripts: logging, stop signals, the closing summary.

Per-message lines (the original tutorial's output) go to stdout; logs, the
start-up line and the closing summary go to stderr, so stdout stays exactly
what the original printed.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import logging
import queue
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import ParamSpec, TextIO

from .clients import ClientError
from .config import Settings, settings_from_args
from .errors import ConfigError, PipelineError

P = ParamSpec("P")


def setup_logging(name: str) -> logging.Logger:
    """Log to stderr with a time stamp; the client libraries' chatter only from WARNING up."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("librdkafka").setLevel(logging.WARNING)
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)  # "Task ran for 0.15s": its own loop's timing
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the console's every request
    return logging.getLogger(name)


def install_stop_handlers() -> threading.Event:
    """SIGTERM or a first Ctrl-C sets the returned event; a second Ctrl-C kills.

    Loops check the event between polls, then drain, flush, commit and close.
    """
    stop = threading.Event()
    # The handler runs in the main thread between two of its bytecodes, which may be inside stop.wait() holding the
    # event's lock (taken back after a timed wait): stop.set() there would wait for that lock forever (seen: a producer
    # that never stopped on SIGTERM). It hands the signal to a thread instead, through a SimpleQueue, whose put() is
    # reentrant (made to be called from such places).
    requests: queue.SimpleQueue[int] = queue.SimpleQueue()

    def relay() -> None:
        requests.get()
        stop.set()

    threading.Thread(target=relay, name="stop-request", daemon=True).start()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        requests.put(signum)
        # From now on the default action applies: a second Ctrl-C ends the process at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


@contextmanager
def instance_slot(name: str, limit: int = 64) -> Iterator[str]:
    """``<host>-<n>``: the lowest slot n free on this host for ``name``, held until the block ends.

    A slot is an advisory lock on a file; the OS releases it when the process
    dies, so a detector restarted after a crash gets its old slot (and so its
    transactional id) back, while two live instances never share one.
    """
    lock_dir = Path(tempfile.gettempdir()) / "fraud-pipeline-slots"
    lock_dir.mkdir(exist_ok=True)
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    for n in range(limit):
        lock_file = (lock_dir / f"{safe_name}.{n}.lock").open("w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.close()
            continue
        try:
            yield f"{socket.gethostname()}-{n}"
        finally:
            lock_file.close()  # closing releases the lock
        return
    raise PipelineError(f"more than {limit} instances of {name} on this host")


class Progress:
    """Progress of long work on stderr: a bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, label: str, total: int | None, out: TextIO | None = None, every_s: float = 5.0) -> None:
        self.label = label
        self.total = total
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty()
        self.every_s = every_s
        self.started = self.last = time.monotonic()
        self.done = 0
        self.note = ""

    def __call__(self, done: int, note: str = "") -> None:
        """``done`` units are done (``note``: what just happened)."""
        self.done, self.note = done, note
        now = time.monotonic()
        if self.tty:
            self.out.write("\r" + self._text(now))
            self.out.flush()
        elif now - self.last >= self.every_s:
            self.out.write(self._text(now) + "\n")
            self.out.flush()
            self.last = now

    def step(self, n: int = 1, note: str = "") -> None:
        """``n`` more units are done."""
        self(self.done + n, note)

    def _text(self, now: float) -> str:
        elapsed = now - self.started
        note = f" {self.note}" if self.note else ""
        if not self.total:
            return f"{self.label}: {self.done} {elapsed:.1f}s{note}"
        width = 30
        filled = min(width, width * self.done // self.total)
        return f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:.1f}s{note}"

    def close(self) -> None:
        self.note = ""
        self.out.write(("\r" if self.tty else "") + self._text(time.monotonic()) + " done\n")
        self.out.flush()


class Summary:
    """Counts per outcome, printed as one line when the process ends."""

    def __init__(self, name: str, unit: str) -> None:
        self.name = name
        self.unit = unit
        self.counts: Counter[str] = Counter()
        self.total = 0
        self._started = time.monotonic()

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.total += 1

    def line(self, reason: str) -> str:
        elapsed = time.monotonic() - self._started
        parts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(self.counts.items()))
        detail = f": {parts}" if parts else ""
        return f"{self.name}: {self.total} {self.unit} in {elapsed:.1f}s ({reason}){detail}"

    def print(self, reason: str) -> None:
        print(self.line(reason), file=sys.stderr, flush=True)


def run_cli(name: str, args: argparse.Namespace, run: Callable[[Settings, threading.Event], int]) -> int:
    """Settings from the parsed flags, logging and signals set up, run; a PipelineError is one log line and exit 1."""
    settings = settings_from_args(args)
    log = setup_logging(name)
    try:
        return run(settings, install_stop_handlers())
    except PipelineError as exc:
        log.error("%s", exc)
        return 1
    except ClientError as exc:
        log.error("stopping on a Kafka error: %s", exc)
        return 1


def cli_main(main: Callable[P, int]) -> Callable[P, int]:
    """A script's main, with the edge every script shares for settings that cannot work.

    A ConfigError (an environment value, a flag, the client config file: read
    before logging is set up) ends the script as argparse's own errors would,
    but with exit status 1: ``error: MESSAGE`` on stderr.
    """

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except ConfigError as exc:
            return config_error(exc)

    return run


def config_error(exc: ConfigError) -> int:
    """Say ``error: MESSAGE`` on stderr; the exit status of settings that cannot work, 1."""
    print(f"error: {exc}", file=sys.stderr, flush=True)
    return 1
