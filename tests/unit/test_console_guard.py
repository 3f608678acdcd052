"""The console's guard without Kafka: Host, Origin and CSRF checks, sessions, roles, the security headers."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, cast

from aiohttp.test_utils import TestClient, TestServer

from fraud_pipeline.console import host_names, loopback
from fraud_pipeline.console.accounts import load_users, save_user
from fraud_pipeline.console.app import CONTENT_SECURITY_POLICY, Guard, make_app
from fraud_pipeline.console.casework import CaseError, CaseWork
from fraud_pipeline.console.cluster_view import ClusterView
from fraud_pipeline.console.monitor import Monitor

PASSWORD = "correct horse battery"


class Cases:
    """What the handlers call of CaseWork, recorded."""

    def __init__(self) -> None:
        self.done: list[tuple[str, ...]] = []

    def audit(self, user: str, action: str, target: str = "", detail: Any = None) -> None:
        self.done.append((user, action))

    def queue(self) -> dict[str, Any]:
        return {"open": [], "resolved": [], "error": None}

    def claim(self, payment_id: str, user: str) -> dict[str, Any]:
        if payment_id == "taken":
            raise CaseError("claimed by bob", 409)
        self.done.append((user, "claim", payment_id))
        return {"ok": True}


def run(users: Path | None, check: Any) -> Any:
    cases = Cases()
    guard = Guard({"127.0.0.1:8080"}, load_users(users) if users else {})
    app = make_app(cast(Monitor, object()), cast(ClusterView, object()), threading.Event(), None, cast(CaseWork, cases), guard)

    async def go() -> Any:
        async with TestClient(TestServer(app)) as client:
            return await check(client, cases)

    return asyncio.run(go())


HOST = {"Host": "127.0.0.1:8080"}
ORIGIN = {**HOST, "Origin": "http://127.0.0.1:8080"}


def test_without_accounts_the_console_reads_and_refuses_every_write() -> None:
    async def check(client: TestClient, cases: Cases) -> None:
        page = await client.get("/api/cases", headers=HOST)
        assert page.status == 200 and page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
        refused = await client.post("/api/cases/p/claim", headers=ORIGIN)
        assert refused.status == 403 and "read-only" in (await refused.json())["error"]
        assert (await client.get("/api/cases", headers={"Host": "evil.example:8080"})).status == 421
        assert cases.done == []

    run(None, check)


def test_with_accounts_sign_in_roles_origin_and_csrf(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    save_user(users, "ana", "analyst", PASSWORD)
    save_user(users, "vic", "viewer", PASSWORD)

    async def check(client: TestClient, cases: Cases) -> None:
        assert (await client.get("/api/cases", headers=HOST)).status == 401
        assert (await client.get("/", headers=HOST)).status == 200  # the page itself, to sign in
        wrong = await client.post("/api/login", json={"user": "ana", "password": "nope nope nope"}, headers=ORIGIN)
        assert wrong.status == 401
        foreign = await client.post("/api/login", json={"user": "ana", "password": PASSWORD},
                                    headers={**HOST, "Origin": "http://evil.example"})
        assert foreign.status == 403
        signed = await client.post("/api/login", json={"user": "ana", "password": PASSWORD}, headers=ORIGIN)
        assert signed.status == 200
        body = await signed.json()
        cookie = signed.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and PASSWORD not in cookie
        assert (await client.get("/api/cases", headers=HOST)).status == 200
        assert (await client.post("/api/cases/p/claim", headers=ORIGIN)).status == 403  # no CSRF token
        bad = await client.post("/api/cases/p/claim", headers={**ORIGIN, "X-CSRF-Token": "guess"})
        assert bad.status == 403
        no_origin = await client.post("/api/cases/p/claim", headers={**HOST, "X-CSRF-Token": body["csrf"]})
        assert no_origin.status == 403
        ok = await client.post("/api/cases/p/claim", headers={**ORIGIN, "X-CSRF-Token": body["csrf"]})
        assert ok.status == 200
        taken = await client.post("/api/cases/taken/claim", headers={**ORIGIN, "X-CSRF-Token": body["csrf"]})
        assert taken.status == 409 and (await taken.json())["error"] == "claimed by bob"
        await client.post("/api/logout", headers={**ORIGIN, "X-CSRF-Token": body["csrf"]})
        assert (await client.get("/api/cases", headers=HOST)).status == 401
        viewer = await (await client.post("/api/login", json={"user": "vic", "password": PASSWORD}, headers=ORIGIN)).json()
        refused = await client.post("/api/cases/p/claim", headers={**ORIGIN, "X-CSRF-Token": viewer["csrf"]})
        assert refused.status == 403 and "viewer" in (await refused.json())["error"]
        assert cases.done == [("?", "sign-in-refused"), ("ana", "sign-in"), ("ana", "claim", "p"), ("ana", "sign-out"),
                              ("vic", "sign-in")]

    run(users, check)


def test_failed_sign_ins_are_throttled_by_name_and_address(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    save_user(users, "ana", "analyst", PASSWORD)

    async def check(client: TestClient, cases: Cases) -> None:
        for _ in range(5):
            wrong = await client.post("/api/login", json={"user": "ana", "password": "guess guess"}, headers=ORIGIN)
            assert wrong.status == 401
        throttled = await client.post("/api/login", json={"user": "ana", "password": PASSWORD}, headers=ORIGIN)
        assert throttled.status == 429 and "too many sign-in attempts" in (await throttled.json())["error"]
        refused = await client.get("/api/cases", headers=HOST)
        assert refused.status == 401 and refused.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert cases.done == [("?", "sign-in-refused")] * 5  # no typed name: it may be a password

    run(users, check)


def test_the_host_names_the_console_answers_to() -> None:
    names = host_names("127.0.0.1", 8080, ["fraud.example.com", "console.lan:8080"])
    assert {"127.0.0.1:8080", "localhost:8080", "[::1]:8080", "fraud.example.com", "console.lan:8080"} <= names
    assert "evil.example:8080" not in names and "127.0.0.1:8081" not in names
    assert loopback("127.0.0.1") and loopback("::1") and loopback("localhost") and not loopback("0.0.0.0")
