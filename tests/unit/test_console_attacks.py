"""The console against what a hostile network or a careless operator does: one test per finding of its security read.

The app runs for real (aiohttp's test server), with Kafka stubbed: what is attacked here is the console's own code.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fraud_pipeline.config import Settings
from fraud_pipeline.console import app as console_app
from fraud_pipeline.console import run as run_console
from fraud_pipeline.console import watch_users
from fraud_pipeline.console.accounts import Sessions, User, check_password, load_users, remove_user, save_user
from fraud_pipeline.console.app import MAX_BODY_BYTES, SESSION_COOKIE, Guard, Throttle, address_key, make_app
from fraud_pipeline.console.casework import CaseWork
from fraud_pipeline.console.cluster_view import ClusterView
from fraud_pipeline.console.monitor import Monitor
from fraud_pipeline.errors import ConfigError
from tests.unit.test_console_guard import Cases as RecordedCases

PASSWORD = "correct horse battery"
HOST = {"Host": "127.0.0.1:8080"}
ORIGIN = {**HOST, "Origin": "http://127.0.0.1:8080"}


class Cases(RecordedCases):
    """The guard tests' recorded CaseWork, with each audit record's detail; a list entry refused if reached."""

    def __init__(self) -> None:
        super().__init__()
        self.details: list[Any] = []

    def audit(self, user: str, action: str, target: str = "", detail: Any = None) -> None:
        super().audit(user, action, target, detail)
        self.details.append(detail)

    def add_to_list(self, user: str, name: str, value: str, ttl_s: float | None, reason: str) -> Any:
        self.done.append((user, "list-add", name, value))
        raise AssertionError("a refused request must not reach the list")


class StubMonitor:
    def state(self) -> dict[str, Any]:
        return {"errors": []}


def serve(guard: Guard, check: Any) -> Any:
    cases = Cases()
    app = make_app(cast(Monitor, StubMonitor()), cast(ClusterView, object()), threading.Event(), None,
                   cast(CaseWork, cases), guard)

    async def go() -> Any:
        async with TestClient(TestServer(app)) as client:
            return await check(client, cases)

    return asyncio.run(go())


def users_file(tmp_path: Path, **roles: str) -> Path:
    path = tmp_path / "users.json"
    for name, role in roles.items():
        save_user(path, name, role, PASSWORD)
    return path


def guard_of(path: Path, **kwargs: Any) -> Guard:
    return Guard({"127.0.0.1:8080"}, load_users(path), **kwargs)


async def sign_in(client: TestClient, name: str = "ana", headers: dict[str, str] = ORIGIN) -> tuple[str, str]:
    """(the session cookie's value, the CSRF token)."""
    response = await client.post("/api/login", json={"user": name, "password": PASSWORD}, headers=headers)
    assert response.status == 200, await response.text()
    cookie = next(iter(response.cookies.values()))
    return cookie.value, (await response.json())["csrf"]


def test_forty_concurrent_wrong_sign_ins_check_at_most_five_passwords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted before the hash is checked, one in flight per name: the rest get 429 without a check."""
    checked = []
    real = console_app.authenticate

    def counting(users: Any, name: str, password: str) -> Any:
        checked.append(name)
        time.sleep(0.05)  # a slow hash keeps the others in flight meanwhile
        return real(users, name, password)

    monkeypatch.setattr(console_app, "authenticate", counting)
    guard = guard_of(users_file(tmp_path, ana="analyst"))

    async def check(client: TestClient, cases: Cases) -> list[int]:
        tries = [client.post("/api/login", json={"user": "ana", "password": f"wrong guess {i}"}, headers=ORIGIN)
                 for i in range(40)]
        return [response.status for response in await asyncio.gather(*tries)]

    async def then_in_turn(client: TestClient, cases: Cases) -> list[int]:
        statuses = await check(client, cases)
        assert len(checked) <= 5, f"{len(checked)} passwords checked of 40 concurrent tries"
        for _ in range(10):  # then one at a time, until the name is locked
            wrong = await client.post("/api/login", json={"user": "ana", "password": "wrong again"}, headers=ORIGIN)
            statuses.append(wrong.status)
            if wrong.status == 429:
                break
        right = await client.post("/api/login", json={"user": "ana", "password": PASSWORD}, headers=ORIGIN)
        return [*statuses, right.status]

    statuses = serve(guard, then_in_turn)
    assert len(checked) == 5 and statuses.count(401) == 5, f"{len(checked)} passwords checked: {statuses}"
    assert statuses[-2:] == [429, 429]  # locked: the right password too


def test_ten_thousand_and_one_junk_names_do_not_free_a_locked_name() -> None:
    throttle = Throttle(keys=10_000)
    for _ in range(5):
        assert throttle.admit("user:ana", "remote:10.0.0.1") is None
        throttle.settle("user:ana", "remote:10.0.0.1", succeeded=False)
    for i in range(10_001):
        if throttle.admit(f"user:junk-{i}", f"remote:10.1.{i // 250}.{i % 250}") is None:
            throttle.settle(f"user:junk-{i}", f"remote:10.1.{i // 250}.{i % 250}", succeeded=False)
    assert len(throttle) <= 10_000
    assert throttle.admit("user:ana", "remote:10.9.9.9") is not None, "the locked name was forgotten"


def test_a_success_is_not_counted_and_ipv6_clients_are_throttled_by_their_64() -> None:
    throttle = Throttle()
    for _ in range(10):
        assert throttle.admit("user:ana", "remote:1.2.3.4") is None
        throttle.settle("user:ana", "remote:1.2.3.4", succeeded=True)
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "remote:2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.0.0.1") == "remote:10.0.0.1"


def test_sign_ins_beyond_the_hashers_queue_are_answered_503(tmp_path: Path) -> None:
    guard = guard_of(users_file(tmp_path, ana="analyst"))
    guard.hashing = console_app.HASHERS + console_app.HASH_QUEUE  # every hasher busy, the queue full

    async def check(client: TestClient, cases: Cases) -> int:
        return (await client.post("/api/login", json={"user": "ana", "password": PASSWORD}, headers=ORIGIN)).status

    assert serve(guard, check) == 503
    # the refused attempt left no attempt in flight, and was not counted: it was never checked
    assert guard.throttle.attempts("user:ana") == 0 and guard.throttle.admit("user:ana") is None


def test_a_removed_user_is_signed_out_within_five_seconds(tmp_path: Path) -> None:
    path = users_file(tmp_path, ana="analyst", bob="admin")
    guard = guard_of(path)
    stop, reload = threading.Event(), threading.Event()
    watcher = threading.Thread(target=watch_users, args=(path, guard, stop, reload), daemon=True)
    ana, bob = guard.sessions.start(guard.users["ana"]), guard.sessions.start(guard.users["bob"])
    removed = time.monotonic()
    # Removed before the watcher first looks (as between a console's start and its watcher's first look; a
    # loaded machine once let the test's removal come first): the change is not missed.
    remove_user(path, "ana")
    watcher.start()
    try:
        while guard.sessions.get(ana.token) is not None:
            assert time.monotonic() - removed < 5, "the removed user's session still lives after 5 s"
            time.sleep(0.05)
        assert guard.sessions.get(bob.token) is not None  # the others stay
        save_user(path, "bob", "viewer", PASSWORD + " changed")  # a changed role and password: signed out too
        changed = time.monotonic()
        while guard.sessions.get(bob.token) is not None:
            assert time.monotonic() - changed < 5
            time.sleep(0.05)
    finally:
        stop.set()
        watcher.join(5)


def test_an_open_event_stream_does_not_keep_an_idle_session_alive(tmp_path: Path) -> None:
    guard = guard_of(users_file(tmp_path, ana="analyst"), sessions=Sessions(idle_s=1.5))

    async def check(client: TestClient, cases: Cases) -> float:
        cookie, _ = await sign_in(client)
        started = time.monotonic()
        async with client.get("/api/events", headers=HOST, cookies={SESSION_COOKIE: cookie}) as stream:
            assert stream.status == 200
            await asyncio.wait_for(stream.read(), timeout=10)  # the stream ends once the session lapses
        ended = time.monotonic() - started
        assert (await client.get("/api/lists", headers=HOST, cookies={SESSION_COOKIE: cookie})).status == 401
        return ended

    assert serve(guard, check) < 5


def test_sessions_end_after_their_lifetime_and_a_user_holds_a_few_at_most() -> None:
    sessions = Sessions(idle_s=60, max_s=0.3, per_user=2)
    user = User("ana", "analyst", "x")
    first, second = sessions.start(user), sessions.start(user)
    third = sessions.start(user)
    assert sessions.get(first.token) is None and sessions.get(second.token) is not None  # the oldest went
    time.sleep(0.35)
    assert sessions.get(third.token) is None, "a session in use outlived its absolute lifetime"


def test_a_400_kb_reason_is_refused_with_413_and_no_list_entry_is_written(tmp_path: Path) -> None:
    guard = guard_of(users_file(tmp_path, bob="admin"))

    async def check(client: TestClient, cases: Cases) -> None:
        cookie, csrf = await sign_in(client, "bob")
        headers = {**ORIGIN, "X-CSRF-Token": csrf}
        big = await client.post("/api/lists/block/add", json={"value": "acct-1", "reason": "x" * 400_000},
                                headers=headers, cookies={SESSION_COOKIE: cookie})
        assert big.status == 413
        over = await client.post("/api/lists/block/add", json={"value": "acct-1", "reason": "😀" * 2001},
                                 headers=headers, cookies={SESSION_COOKIE: cookie})
        assert over.status == 413 and "2000" in (await over.json())["error"]
        assert not [done for done in cases.done if done[1] == "list-add"]

    serve(guard, check)
    assert MAX_BODY_BYTES < 400_000


def test_behind_the_trusted_proxy_the_cookie_is_host_prefixed_and_secure_with_hsts(tmp_path: Path) -> None:
    guard = guard_of(users_file(tmp_path, ana="analyst"), trusted_proxy="127.0.0.1")
    https = {"Host": "127.0.0.1:8080", "Origin": "https://127.0.0.1:8080", "X-Forwarded-Proto": "https",
             "X-Forwarded-For": "203.0.113.7"}

    async def check(client: TestClient, cases: Cases) -> None:
        plain = await client.post("/api/login", json={"user": "ana", "password": PASSWORD},
                                  headers={**https, "Origin": "http://127.0.0.1:8080"})
        assert plain.status == 403  # an https console refuses an http Origin
        signed = await client.post("/api/login", json={"user": "ana", "password": PASSWORD}, headers=https)
        assert signed.status == 200
        cookie = signed.headers["Set-Cookie"]
        assert cookie.startswith(f"__Host-{SESSION_COOKIE}=")
        for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
            assert attribute in cookie, cookie
        assert "Domain" not in cookie
        assert signed.headers["Strict-Transport-Security"] == console_app.HSTS
        assert cases.done[-1] == ("ana", "sign-in")

    serve(guard, check)


def test_forwarded_headers_from_anyone_but_the_trusted_proxy_are_ignored(tmp_path: Path) -> None:
    guard = guard_of(users_file(tmp_path, ana="analyst"), trusted_proxy="192.0.2.1")
    forged = {**ORIGIN, "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}

    async def check(client: TestClient, cases: Cases) -> None:
        for _ in range(5):
            wrong = await client.post("/api/login", json={"user": "ana", "password": "wrong guess!"}, headers=forged)
            assert wrong.status == 401 and "Strict-Transport-Security" not in wrong.headers
        # the refusals' audit: the address and its count, never the name typed (it may be a password)
        assert cases.done == [("?", "sign-in-refused")] * 5
        assert [d["attempts"] for d in cases.details] == [1, 2, 3, 4, 5] and {d["remote"] for d in cases.details} == {"127.0.0.1"}
        # the address throttled is the peer's, not the one the forged header names
        assert guard.throttle.admit("user:someone", address_key("127.0.0.1")) is not None

    serve(guard, check)


def test_the_users_file_refuses_a_planted_tmp_symlink_a_loose_mode_and_weak_passwords(tmp_path: Path) -> None:
    path = users_file(tmp_path, ana="analyst")
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    os.symlink(target, tmp_path / "users.json.tmp")
    with pytest.raises(ConfigError, match=r"users\.json\.tmp exists"):
        save_user(path, "bob", "admin", PASSWORD)
    assert target.read_text() == "untouched" and "bob" not in load_users(path)
    os.unlink(tmp_path / "users.json.tmp")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_users(path)
    os.chmod(path, 0o600)
    os.symlink(path, tmp_path / "link.json")
    with pytest.raises(ConfigError, match="symlink"):
        load_users(tmp_path / "link.json")
    for weak in ("aaaaaaaaaaaaaaaa", "short pass", "Password12345", "ana-the-analyst"):
        with pytest.raises(ConfigError):
            check_password("ana", weak)
    check_password("ana", PASSWORD)


def test_the_console_refuses_to_serve_beyond_loopback_in_plain_http(tmp_path: Path) -> None:
    path = users_file(tmp_path, ana="analyst")
    with pytest.raises(ConfigError, match="--tls-cert"):
        run_console(cast(Settings, None), threading.Event(), "0.0.0.0", 8080, None, users_file=str(path))


def test_live_event_streams_are_capped_per_user(tmp_path: Path) -> None:
    guard = guard_of(users_file(tmp_path, ana="analyst"))

    async def check(client: TestClient, cases: Cases) -> None:
        cookie, _ = await sign_in(client)
        signed = {SESSION_COOKIE: cookie}
        streams = [await client.get("/api/events", headers=HOST, cookies=signed) for _ in range(console_app.STREAMS_PER_USER)]
        assert all(stream.status == 200 for stream in streams)
        refused = await client.get("/api/events", headers=HOST, cookies=signed)
        assert refused.status == 429
        streams[0].close()
        deadline = time.monotonic() + 10
        while (again := await client.get("/api/events", headers=HOST, cookies=signed)).status == 429:
            assert time.monotonic() < deadline, "a closed stream was never given back"
            await asyncio.sleep(0.2)
        again.close()
        for stream in streams[1:]:
            stream.close()

    serve(guard, check)


def test_a_failure_shows_no_detail_to_a_caller_who_is_not_signed_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(users: Any, name: str, password: str) -> Any:
        raise RuntimeError("/etc/fraud/console-users.json: internal detail")

    monkeypatch.setattr(console_app, "authenticate", broken)
    guard = guard_of(users_file(tmp_path, ana="analyst"))

    async def check(client: TestClient, cases: Cases) -> None:
        failed = await client.post("/api/login", json={"user": "ana", "password": PASSWORD}, headers=ORIGIN)
        assert failed.status == 500
        assert (await failed.json()) == {"error": "the console failed to answer; its log says why"}

    serve(guard, check)


def test_the_users_commands_add_change_and_remove(tmp_path: Path) -> None:
    users = tmp_path / "users.json"

    def command(*args: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "fraud_console.py", *args, "--users", str(users)], input=password + "\n",
                              capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])

    added = command("adduser", "ana", "--role", "admin", "--password-stdin")
    assert (added.returncode, added.stdout.strip()) == (0, f"added ana (admin) in {users}")
    weak = command("passwd", "ana", "--password-stdin", password="password1234")
    assert weak.returncode == 2 and "too easy to guess" in weak.stderr
    changed = command("passwd", "ana", "--password-stdin", password=PASSWORD + " again")
    assert changed.returncode == 0 and load_users(users)["ana"].role == "admin"
    assert command("passwd", "bob", "--password-stdin").returncode == 2
    removed = command("removeuser", "ana")
    assert removed.returncode == 0 and load_users(users) == {}
    again = command("removeuser", "ana")
    assert again.returncode == 2 and "no user 'ana'" in again.stderr
