"""The local cluster's jars: a pinned list in the repo, fetched with Python from a Maven repository, each file checked.

``devcluster/kafka-jars.txt`` names every jar the nodes run on (Apache Kafka
and its runtime dependencies) by its Maven coordinates, with its SHA-256 and
size. :func:`fetch_jars` downloads them from Maven Central, or from the
repository ``$MAVEN_REPOSITORY_URL`` names (a mirror, or a ``file://``
folder laid out like one), into a partial folder, checks each file's SHA-256,
and moves the folder into place only once every jar is there.

The list is written by ``python -m devcluster lock-jars`` (:func:`lock_jars`),
which needs Maven: it resolves ``devcluster/pom.xml`` and records what Maven
resolved. Nothing else needs Maven or Java.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import JarsError

MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"
"""Maven Central's canonical repository URL: where the jars come from unless MAVEN_REPOSITORY_URL says otherwise."""
REPOSITORY_ENV = "MAVEN_REPOSITORY_URL"
LOCK_FILE = Path(__file__).resolve().parent / "kafka-jars.txt"
POM = Path(__file__).resolve().parent / "pom.xml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
ATTEMPTS = 4
"""Tries per jar on network errors (timeouts, resets, HTTP 5xx), with 1, 2, 4 s between them."""
PARALLEL = 4
TIMEOUT_S = 30.0
MARKER = ".complete"
"""In a complete jar folder: the digest of the list it holds, so that a changed list is fetched again."""


@dataclass(frozen=True)
class Jar:
    """One pinned jar: Maven coordinates, SHA-256 and size in bytes."""

    group: str
    artifact: str
    version: str
    classifier: str
    sha256: str
    size: int

    @property
    def coordinates(self) -> str:
        return ":".join(p for p in (self.group, self.artifact, self.version, self.classifier) if p)

    @property
    def filename(self) -> str:
        return f"{self.artifact}-{self.version}{'-' + self.classifier if self.classifier else ''}.jar"

    def url(self, repository: str) -> str:
        return f"{repository.rstrip('/')}/{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.filename}"

    def line(self) -> str:
        return f"{self.coordinates} {self.sha256} {self.size}"


_LINE = re.compile(r"^([\w.\-]+):([\w.\-]+):([\w.\-]+)(?::([\w.\-]+))? ([0-9a-f]{64}) (\d+)$")


def parse_lock(text: str, source: str = "the jar list") -> list[Jar]:
    """The jars of a list: ``groupId:artifactId:version[:classifier] sha256 size`` per line; ``#`` starts a comment."""
    jars = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise JarsError(f"{source}, line {number}: expected 'groupId:artifactId:version[:classifier] sha256 size', got {line[:100]!r}")
        group, artifact, version, classifier, sha256, size = match.groups()
        jars.append(Jar(group, artifact, version, classifier or "", sha256, int(size)))
    if not jars:
        raise JarsError(f"{source} lists no jars")
    names = [j.filename for j in jars]
    if len(set(names)) != len(names):
        raise JarsError(f"{source} names a jar file twice: {sorted({n for n in names if names.count(n) > 1})}")
    return jars


def read_lock(path: Path = LOCK_FILE) -> list[Jar]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise JarsError(f"cannot read the jar list {path}: {exc.strerror}") from None
    return parse_lock(text, str(path.name))


def lock_digest(jars: Iterable[Jar]) -> str:
    return hashlib.sha256("\n".join(sorted(j.line() for j in jars)).encode()).hexdigest()


def repository_url(env: dict[str, str] | os._Environ[str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get(REPOSITORY_ENV) or MAVEN_CENTRAL).rstrip("/")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    if isinstance(exc, urllib.error.URLError):
        return not isinstance(exc.reason, FileNotFoundError | PermissionError)  # a file:// repository without the jar
    return isinstance(exc, http.client.HTTPException | TimeoutError | ConnectionError)


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return getattr(reason, "strerror", None) or str(reason)
    return str(exc) or type(exc).__name__


class _Progress:
    """``fetching 92 jars (120 MB) from URL ... 40/92``: on one line on a terminal, a line per tenth otherwise."""

    def __init__(self, count: int, total_bytes: int, repository: str) -> None:
        self.count = count
        self.done = 0
        self.tty = sys.stdout.isatty()
        self.lock = threading.Lock()
        self.head = f"fetching {count} jars ({total_bytes / 1e6:.0f} MB) from {repository} ..."
        print(self.head, end="" if self.tty else "\n", flush=True)

    def step(self) -> None:
        with self.lock:
            self.done += 1
            if self.tty:
                print(f"\r{self.head} {self.done}/{self.count}", end="", flush=True)
            elif self.done == self.count or self.done % max(1, self.count // 10) == 0:
                print(f"  {self.done}/{self.count}", flush=True)

    def finish(self) -> None:
        if self.tty:
            print(flush=True)


def _download(jar: Jar, repository: str, folder: Path, stop: threading.Event, delay_s: float) -> None:
    """``folder/<jar>``, checked; a partial or wrong download is never left under the jar's name."""
    url = jar.url(repository)
    target = folder / jar.filename
    temporary = folder / f"{jar.filename}.download"
    request = urllib.request.Request(url, headers={"User-Agent": "fraud-pipeline-devcluster (Python urllib)"})
    for attempt in range(1, ATTEMPTS + 1):
        if stop.is_set():
            return
        try:
            digest = hashlib.sha256()
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, temporary.open("wb") as out:
                while chunk := response.read(1 << 16):
                    if stop.is_set():
                        break
                    digest.update(chunk)
                    out.write(chunk)
            if stop.is_set():  # another download failed: this one is given up, its part not left behind
                temporary.unlink(missing_ok=True)
                return
            break
        except (OSError, http.client.HTTPException) as exc:
            temporary.unlink(missing_ok=True)
            if not _retryable(exc):
                raise JarsError(f"cannot fetch {jar.coordinates}: {_reason(exc)} at {url} "
                                f"(is {repository} a Maven repository? {REPOSITORY_ENV} chooses another)") from None
            if attempt == ATTEMPTS:
                raise JarsError(f"cannot fetch {jar.coordinates} from {url} after {ATTEMPTS} attempts: {_reason(exc)} "
                                f"(is the network up? {REPOSITORY_ENV} chooses another Maven repository)") from None
            time.sleep(delay_s * 2 ** (attempt - 1))
    got = digest.hexdigest()
    if got != jar.sha256:
        temporary.unlink(missing_ok=True)
        raise JarsError(f"{jar.filename} from {url} has SHA-256 {got}, but {LOCK_FILE.name} pins {jar.sha256}: "
                        "not kept (a wrong or tampered file, or a changed repository)")
    os.replace(temporary, target)


def fetch_jars(lib_dir: Path, jars: list[Jar] | None = None, repository: str | None = None, *, retry_delay_s: float = 1.0) -> Path:
    """Make ``lib_dir`` hold exactly the listed jars, checked; fetch those missing. Return ``lib_dir``.

    Jars already in ``lib_dir`` or in its partial folder (an interrupted
    fetch) are kept when their SHA-256 matches; the rest are downloaded.
    """
    jars = read_lock() if jars is None else jars
    repository = repository_url() if repository is None else repository.rstrip("/")
    digest = lock_digest(jars)
    marker = lib_dir / MARKER
    if marker.exists() and marker.read_text().strip() == digest:
        return lib_dir
    lib_dir.parent.mkdir(parents=True, exist_ok=True)
    # One fetch at a time per folder: two at once would delete each other's downloads and folders.
    with lib_dir.with_name(lib_dir.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text().strip() == digest:  # fetched meanwhile by the process we waited for
            return lib_dir
        return _fetch_into(lib_dir, jars, repository, digest, retry_delay_s)


def _fetch_into(lib_dir: Path, jars: list[Jar], repository: str, digest: str, retry_delay_s: float) -> Path:
    marker = lib_dir / MARKER
    partial = lib_dir.with_name(lib_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    for leftover in partial.glob("*.download"):
        leftover.unlink(missing_ok=True)
    missing = []
    for jar in jars:
        done = partial / jar.filename
        if done.exists() and _sha256(done) == jar.sha256:
            continue
        kept = lib_dir / jar.filename  # a complete folder of an older list, or of Maven's copy
        if kept.exists() and _sha256(kept) == jar.sha256:
            shutil.copy2(kept, done)
            continue
        done.unlink(missing_ok=True)
        missing.append(jar)
    if missing:
        began = time.monotonic()
        progress = _Progress(len(missing), sum(j.size for j in missing), repository)
        stop = threading.Event()

        def one(jar: Jar) -> None:
            try:
                _download(jar, repository, partial, stop, retry_delay_s)
            except BaseException:
                stop.set()
                raise
            if not stop.is_set():
                progress.step()

        try:
            with ThreadPoolExecutor(PARALLEL) as pool:
                futures = [pool.submit(one, jar) for jar in missing]
                try:
                    for future in futures:
                        future.result()
                except BaseException:  # the first error, or Ctrl-C: the other downloads stop too
                    stop.set()
                    raise
        finally:
            progress.finish()
        print(f"fetched {len(missing)} jars ({sum(j.size for j in missing) / 1e6:.0f} MB) in {time.monotonic() - began:.1f}s",
              flush=True)
    wanted = {j.filename for j in jars}
    for extra in partial.iterdir():
        if extra.name not in wanted:
            extra.unlink()
    (partial / MARKER).write_text(digest + "\n")
    if marker.exists() and marker.read_text().strip() == digest:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
        return lib_dir
    shutil.rmtree(lib_dir, ignore_errors=True)
    partial.rename(lib_dir)
    return lib_dir


# ---------------------------------------------------------------------------
# Writing the list (needs Maven)

_RESOLVED = re.compile(
    r"^\s*([^:\s]+):([^:\s]+):jar:(?:([^:\s]+):)?([^:\s]+):(?:compile|runtime|system):(.+?\.jar)(?:\s+--\s+module\s.*)?\s*$"
)


def parse_resolved(text: str) -> list[tuple[str, str, str, str, Path]]:
    """(group, artifact, version, classifier, local file) of each jar in ``mvn dependency:list -DoutputAbsoluteArtifactFilename`` output."""
    found = []
    for line in text.splitlines():
        match = _RESOLVED.match(line)
        if match:
            group, artifact, first, second, path = match.groups()
            classifier, version = (first, second) if first is not None else ("", second)
            found.append((group, artifact, version, classifier, Path(path)))
    return found


LOCK_HEADER = """\
# The jars of the local Kafka cluster (devcluster): Apache Kafka and its runtime dependencies, as Maven resolves
# devcluster/pom.xml. `python -m devcluster jars` (and `up`) fetch them with Python from Maven Central, or from
# $MAVEN_REPOSITORY_URL, and check each file's SHA-256. Written by `python -m devcluster lock-jars` (needs Maven):
# run it after changing pom.xml, and commit this file.
# groupId:artifactId:version[:classifier] sha256 bytes
"""


def lock_jars(out: Path = LOCK_FILE, pom: Path = POM) -> list[Jar]:
    """Resolve ``pom`` with Maven and write the list of its runtime jars, with their SHA-256, to ``out``."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarsError("Maven (mvn) not found: writing the jar list needs it (fetching the listed jars does not)")
    with tempfile.TemporaryDirectory(prefix="lock-jars-") as folder:
        listing = Path(folder) / "dependencies.txt"
        result = subprocess.run([mvn, "-B", "-q", "-f", str(pom), f"{DEPENDENCY_PLUGIN}:list", "-DincludeScope=runtime",
                      "-DoutputAbsoluteArtifactFilename=true", f"-DoutputFile={listing}"],
                                capture_output=True, text=True)
        if result.returncode != 0 or not listing.exists():
            raise JarsError(f"mvn dependency:list failed on {pom}: {(result.stdout + result.stderr).strip()[-300:]}")
        resolved = parse_resolved(listing.read_text())
    if not resolved:
        raise JarsError(f"mvn dependency:list on {pom} listed no jars")
    jars = sorted((Jar(g, a, v, c, _sha256(p), p.stat().st_size) for g, a, v, c, p in resolved), key=lambda j: j.coordinates)
    text = LOCK_HEADER + "".join(j.line() + "\n" for j in jars)
    parse_lock(text)  # never write a list that would not read back
    out.write_text(text)
    return jars
