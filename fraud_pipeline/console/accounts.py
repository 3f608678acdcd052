"""The console's accounts and sessions: a users file of salted scrypt hashes, roles, session and CSRF tokens.

The users file (``fraud_console.py adduser NAME --role analyst``, written with
mode 0600) is JSON::

    {"users": {"ana": {"role": "analyst", "password": "scrypt$16384$8$1$<salt>$<hash>"}}}

Roles, each allowed what the one before it is:

- ``viewer``: sees every page, changes nothing;
- ``analyst``: claims, releases and resolves cases;
- ``admin``: edits lists (and, from a resolved case, adds to them).

A session is a random token in an HttpOnly, SameSite=Strict cookie, held in
memory (a console restart signs everyone out), ended by sign-out or after
SESSION_IDLE_S without a request. Each session has a CSRF token the page
sends back in the ``X-CSRF-Token`` header of every write.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

ROLES = ("viewer", "analyst", "admin")
VIEWER, ANALYST, ADMIN = ROLES
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_IDLE_S = 30 * 60
MIN_PASSWORD_CHARS = 10
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


def load_users(path: Path) -> dict[str, User]:
    """The users of a users file; {} when it does not exist. ConfigError if it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
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
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"a password has at least {MIN_PASSWORD_CHARS} characters")
    users = load_users(path)
    new = check_name(name) not in users
    users[name] = User(name, role, hash_password(password))
    data = {"users": {u.name: {"role": u.role, "password": u.password} for u in users.values()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    os.replace(temporary, path)
    return new


@dataclass
class Session:
    token: str
    user: User
    csrf: str
    seen: float


class Sessions:
    """Signed-in users by session token; safe from any thread."""

    def __init__(self, idle_s: float = SESSION_IDLE_S) -> None:
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def start(self, user: User) -> Session:
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), time.monotonic())
        with self._lock:
            self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of a token (its idle clock restarted), else None."""
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            for stale in [t for t, s in self._sessions.items() if now - s.seen > self._idle_s]:
                del self._sessions[stale]
            session = self._sessions.get(token)
            if session is not None:
                session.seen = now
            return session

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)


def authenticate(users: dict[str, User], name: str, password: str) -> User | None:
    """The user if the password is theirs; a hash is computed for unknown names too (no timing tell)."""
    user = users.get(name)
    stored = user.password if user is not None else _DUMMY
    ok = verify_password(password, stored)
    return user if ok and user is not None else None


_DUMMY = hash_password("not a password of anyone", salt=b"\0" * 16)
