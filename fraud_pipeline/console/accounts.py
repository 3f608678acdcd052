"""The console's accounts and sessions: a users file of salted scrypt hashes, roles, session and CSRF tokens.

The users file (``fraud_console.py adduser NAME --role analyst``, written with
mode 0600) is JSON::

    {"users": {"ana": {"role": "analyst", "password": "scrypt$16384$8$1$<salt>$<hash>"}}}

Roles, each allowed what the one before it is:

- ``viewer``: sees every page, changes nothing;
- ``analyst``: claims, releases and resolves cases;
- ``admin``: edits lists (and, from a resolved case, adds to them).

The file is written under a lock (``FILE.lock``), through a temporary file
created with O_EXCL|O_NOFOLLOW (a leftover or planted ``FILE.tmp`` is refused,
never followed), and refused at load when others may read or write it.

A session is a random token in an HttpOnly, SameSite=Strict cookie (``__Host-``
and Secure over https), held in memory (a console restart signs everyone out),
ended by sign-out, after SESSION_IDLE_S without a request of the user's own
(the event stream and polls do not count), after SESSION_MAX_S whatever the
use, when the user has more than SESSIONS_PER_USER (the oldest ends), or when
the user is removed or changed in the users file. Each session has a CSRF token
the page sends back in the ``X-CSRF-Token`` header of every write.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import ConfigError

ROLES = ("viewer", "analyst", "admin")
VIEWER, ANALYST, ADMIN = ROLES
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_IDLE_S = 30 * 60
SESSION_MAX_S = 12 * 3600
"""A session ends this long after sign-in, however busy (OWASP ASVS 3.3.2's absolute lifetime)."""
SESSIONS_PER_USER = 5
"""Sessions a user may hold at once: a sixth sign-in ends the oldest."""
MIN_PASSWORD_CHARS = 12
COMMON_PASSWORDS = Path(__file__).parent / "common-passwords.txt"
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), with a random 16-byte salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        found = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                               dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, expected)


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password: str
    """The scrypt hash, never the password."""

    def may(self, role: str) -> bool:
        """Whether this user has ``role`` or one above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


def check_name(name: str) -> str:
    if not 1 <= len(name) <= 64 or not set(name) <= NAME_CHARS:
        raise ConfigError(f"a user name is 1-64 letters, digits, '.', '_' or '-', got {name!r}")
    return name


@cache
def _common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def check_password(name: str, password: str) -> None:
    """ConfigError unless ``password`` is fit for an account: MIN_PASSWORD_CHARS or more, not one character repeated,
    not the name, not on the list of common passwords the project ships."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"a password has at least {MIN_PASSWORD_CHARS} characters")
    folded = password.lower()
    if len(set(folded)) == 1 or name.lower() in folded or folded in _common_passwords():
        raise ConfigError("that password is too easy to guess (a common password, one character repeated, or "
                          "containing the user name): choose another")


def load_users(path: Path) -> dict[str, User]:
    """The users of a users file; {} when it does not exist. ConfigError if it cannot be read, is not a regular file
    of its own (a symlink), or others may read or write it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the users file {path}: {exc.strerror or exc} (a symlink is refused)") from None
    try:
        with os.fdopen(descriptor, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(f"the users file {path} is not a regular file")
            if mode & 0o077:
                raise ConfigError(f"the users file {path} may be read or written by others (mode {mode & 0o777:o}): "
                                  f"its password hashes are for its owner only; chmod 600 {path}")
            data = json.loads(file.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the users file {path}: {exc}") from None
    users = {}
    entries = data.get("users") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f"the users file {path} has no 'users' object")
    for name, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("role") not in ROLES or not isinstance(entry.get("password"), str):
            raise ConfigError(f"the users file {path}: user {name!r} needs a role ({', '.join(ROLES)}) and a password hash")
        users[check_name(name)] = User(name, entry["role"], entry["password"])
    return users


def save_user(path: Path, name: str, role: str, password: str) -> bool:
    """Add or change a user in the users file (created 0600); True if the user is new."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    check_password(check_name(name), password)
    with _locked(path):
        users = load_users(path)
        new = name not in users
        users[name] = User(name, role, hash_password(password))
        _write(path, users)
    return new


def remove_user(path: Path, name: str) -> None:
    """Remove a user from the users file; ConfigError if there is no such user. A running console ends their sessions."""
    with _locked(path):
        users = load_users(path)
        if users.pop(name, None) is None:
            raise ConfigError(f"no user {name!r} in {path}")
        _write(path, users)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``FILE.lock`` (flock): one writer of the users file at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _write(path: Path, users: dict[str, User]) -> None:
    """Replace the users file through a temporary file of its own (O_EXCL|O_NOFOLLOW, 0600), under the lock."""
    data = {"users": {u.name: {"role": u.role, "password": u.password} for u in users.values()}}
    temporary = path.with_name(path.name + ".tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ConfigError(f"{temporary} exists (left by a writer that died, or planted): check it and remove it, "
                          f"then try again") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@dataclass
class Session:
    token: str
    user: User
    csrf: str
    seen: float
    """When the user last made a request of their own (monotonic)."""
    started: float = 0.0


class Sessions:
    """Signed-in users by session token; safe from any thread."""

    def __init__(self, idle_s: float = SESSION_IDLE_S, max_s: float = SESSION_MAX_S,
                 per_user: int = SESSIONS_PER_USER) -> None:
        self._idle_s = idle_s
        self._max_s = max_s
        self._per_user = per_user
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def start(self, user: User) -> Session:
        """A new session for ``user``; the user's oldest ends if they already hold ``per_user``."""
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        with self._lock:
            theirs = sorted((s for s in self._sessions.values() if s.user.name == user.name), key=lambda s: s.started)
            for oldest in theirs[:max(0, len(theirs) - self._per_user + 1)]:
                del self._sessions[oldest.token]
            self._sessions[session.token] = session
        return session

    def get(self, token: str | None, *, touch: bool = True) -> Session | None:
        """The live session of a token, else None; ``touch``: a request of the user's own, which restarts its idle
        clock (the event stream's and polls' do not)."""
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            for stale in [t for t, s in self._sessions.items()
                          if now - s.seen > self._idle_s or now - s.started > self._max_s]:
                del self._sessions[stale]
            session = self._sessions.get(token)
            if session is not None and touch:
                session.seen = now
            return session

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    def keep_only(self, users: dict[str, User]) -> list[str]:
        """End the sessions of users removed, or changed (role or password), in ``users``; the names, once each."""
        with self._lock:
            ended = [s for s in self._sessions.values() if users.get(s.user.name) != s.user]
            for session in ended:
                del self._sessions[session.token]
        return sorted({s.user.name for s in ended})

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def authenticate(users: dict[str, User], name: str, password: str) -> User | None:
    """The user if the password is theirs; a hash is computed for unknown names too (no timing tell)."""
    user = users.get(name)
    stored = user.password if user is not None else _DUMMY
    ok = verify_password(password, stored)
    return user if ok and user is not None else None


_DUMMY = hash_password("not a password of anyone", salt=b"\0" * 16)
