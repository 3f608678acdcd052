"""The console's web server (aiohttp): the page, its event stream and the cluster look-ups.

- ``GET /``: the page (``static/``: HTML, script and style; nothing from the internet);
- ``GET /api/events``: server-sent events, one ``state`` event (Monitor.state, with the detectors'
  ``decision_latency`` when the console reads their metrics) about every second;
- ``GET /api/brokers``, ``/api/topics``, ``/api/groups``: Kafdrop's view (ClusterView);
- ``GET /api/messages?topic=&partition=&count=&offset=|time=``: the message browser;
- ``GET /api/session``, ``POST /api/login``, ``POST /api/logout``: sign-in (fraud_pipeline.console.accounts);
- ``GET /api/cases``, ``GET /api/cases/{id}``, ``POST /api/cases/{id}/claim|release|resolve``: the case
  queue (analyst and admin), ``GET /api/lists``, ``POST /api/lists/{name}/add|remove`` (admin),
  ``GET /api/precision?k=``: the rules measured by the labels (fraud_pipeline.console.casework).

Every response carries a Content-Security-Policy without inline script; a request whose Host is
not the console's is refused (DNS rebinding), and so is a write whose Origin is not the console's
or that lacks the session's CSRF token. With a users file, every page but the sign-in needs a
session; without one the console is read-only and only serves on loopback.

Failures reach the page as ``{"error": "..."}`` with a 4xx/5xx status (401: sign in; 403: not
allowed, or the console's Kafka user may not see it; 409: a case held by another; 502: Kafka
failed), never a stack trace.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from ..cases import VERDICTS
from ..clients import ClientError, NotAuthorizedError
from ..errors import PipelineError
from ..payment import is_text
from ..rules.lists import duration_s
from .accounts import ADMIN, ANALYST, VIEWER, Session, Sessions, User, authenticate
from .casework import CaseError, CaseWork
from .cluster_view import BadRequest, ClusterView
from .latency import DecisionLatency
from .monitor import Monitor

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
EVENT_INTERVAL_S = 1.0
MONITOR: web.AppKey[Monitor] = web.AppKey("monitor", Monitor)
VIEW: web.AppKey[ClusterView] = web.AppKey("view", ClusterView)
STOP: web.AppKey[threading.Event] = web.AppKey("stop", threading.Event)
LATENCY: web.AppKey[DecisionLatency] = web.AppKey("latency", DecisionLatency)
CASES: web.AppKey[CaseWork] = web.AppKey("cases", CaseWork)
GUARD: web.AppKey[Guard] = web.AppKey("guard")
SESSION: web.RequestKey[Session] = web.RequestKey("session", Session)
SESSION_COOKIE = "fraud_console_session"
CSRF_HEADER = "X-CSRF-Token"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-store",
}
WRITES = ("POST", "PUT", "PATCH", "DELETE")
OPEN_PATHS = ("/", "/favicon.ico", "/api/session", "/api/login")
SIGN_IN_FAILURES = 5
SIGN_IN_WINDOW_S = 300.0
"""After SIGN_IN_FAILURES failed sign-ins of a name or from an address in this long, it must wait."""
ANONYMOUS = User("anonymous", VIEWER, "")
"""What a request without a session may reach when accounts are configured (and the static files)."""


class Guard:
    """Who may reach the console: its Host names, its users and their sessions."""

    def __init__(self, hosts: set[str], users: dict[str, User], sessions: Sessions | None = None) -> None:
        self.hosts = {host.lower() for host in hosts}
        self.users = users
        self.sessions = sessions if sessions is not None else Sessions()
        self._failures: dict[str, deque[float]] = {}
        self._failures_lock = threading.Lock()

    def throttled(self, *keys: str) -> bool:
        """Whether any of these (a user name, a remote address) failed to sign in SIGN_IN_FAILURES times lately."""
        now = time.monotonic()
        with self._failures_lock:
            for key in keys:
                times = self._failures.get(key)
                while times and now - times[0] > SIGN_IN_WINDOW_S:
                    times.popleft()
                if times is not None and len(times) >= SIGN_IN_FAILURES:
                    return True
        return False

    def failed(self, *keys: str) -> None:
        with self._failures_lock:
            if len(self._failures) > 10_000:
                self._failures.clear()
            for key in keys:
                self._failures.setdefault(key, deque(maxlen=SIGN_IN_FAILURES)).append(time.monotonic())

    @property
    def accounts(self) -> bool:
        return bool(self.users)

    def session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(message: str, status: int) -> web.Response:
    return json_response({"error": message}, status)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the whole state once a second, until the page goes or the console stops."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    monitor, stop, latency = request.app[MONITOR], request.app[STOP], request.app[LATENCY]
    guard, session = request.app[GUARD], request.get(SESSION)
    try:
        while not stop.is_set():
            if guard.accounts and (session is None or guard.sessions.get(session.token) is None):
                break  # signed out, or the session lapsed: the stream ends with it
            state = monitor.state()
            if latency.urls:
                state["decision_latency"] = latency.state()
                state["errors"] = state["errors"] + latency.errors
            payload = orjson.dumps(state)
            await response.write(b"event: state\ndata: " + payload + b"\n\n")
            await asyncio.sleep(EVENT_INTERVAL_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


def _view_call(call: Callable[[ClusterView], Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler running ``call`` in a worker thread, its failures turned into error responses."""

    async def handler(request: web.Request) -> web.Response:
        view = request.app[VIEW]
        try:
            return json_response(await asyncio.to_thread(call, view))
        except BadRequest as exc:
            return error_response(str(exc), 400)
        except NotAuthorizedError as exc:
            return error_response(f"{exc}: this console's user may not read it", 403)
        except ClientError as exc:
            log.warning("%s: %s", request.path, exc)
            return error_response(f"Kafka: {exc}", 502)

    return handler


def _int(query: Any, name: str, *, required: bool = False) -> int | None:
    raw = query.get(name, "")
    if raw == "":
        if required:
            raise BadRequest(f"{name} is required")
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {raw!r}") from None


async def messages(request: web.Request) -> web.Response:
    query = request.query
    try:
        topic = query.get("topic", "")
        if not topic:
            raise BadRequest("topic is required")
        partition = _int(query, "partition", required=True)
        count = _int(query, "count") or 20
        offset, time_ms = _int(query, "offset"), _int(query, "time")
        if partition is None or partition < 0:
            raise BadRequest("partition must be 0 or more")
    except BadRequest as exc:
        return error_response(str(exc), 400)
    return await _view_call(lambda view: view.messages(topic, partition, count, offset=offset, time_ms=time_ms))(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The security headers on every response, as it is prepared (streams and files too)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def guarded(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Host, Origin, CSRF and session checks before any handler."""
    guard = request.app[GUARD]
    host = request.headers.get("Host", "").lower()
    if host not in guard.hosts:
        return error_response(f"this console does not answer to the host {host!r}", 421)
    session = guard.session(request)
    if request.method in WRITES:
        origin = request.headers.get("Origin")
        # https too: behind a TLS proxy the console itself is spoken to in http
        if origin is None or origin.lower() not in (f"http://{host}", f"https://{host}"):
            log.warning("refused %s %s from origin %r", request.method, request.path, origin)
            return error_response("writes are taken from this console's own pages only (Origin)", 403)
        if request.path != "/api/login":
            if not guard.accounts:
                return error_response("this console has no accounts, so it is read-only: fraud_console.py adduser NAME", 403)
            if session is None:
                return error_response("sign in first", 401)
            token = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(token.encode(), session.csrf.encode()):
                log.warning("refused %s %s by %s: no valid CSRF token", request.method, request.path, session.user.name)
                return error_response("missing or wrong CSRF token: reload the page", 403)
    elif guard.accounts and session is None and request.path not in OPEN_PATHS and not request.path.startswith("/static/"):
        return error_response("sign in first", 401)
    if session is not None:
        request[SESSION] = session
    return await handler(request)


def _user(request: web.Request, role: str) -> User:
    """The signed-in user, if they have ``role`` (or above); else an HTTP error."""
    session: Session | None = request.get(SESSION)
    if session is None and role == VIEWER and not request.app[GUARD].accounts:
        return ANONYMOUS  # no accounts: a read-only console on loopback
    if session is None:
        raise web.HTTPUnauthorized(reason="sign in first")
    if not session.user.may(role):
        raise web.HTTPForbidden(reason=f"{session.user.name} is a {session.user.role}: this needs {role}")
    return session.user


async def session_info(request: web.Request) -> web.Response:
    guard = request.app[GUARD]
    session: Session | None = request.get(SESSION)
    data: dict[str, Any] = {"accounts": guard.accounts, "user": None, "role": None, "csrf": None}
    if session is not None:
        data.update(user=session.user.name, role=session.user.role, csrf=session.csrf)
    return json_response(data)


async def login(request: web.Request) -> web.Response:
    guard, cases = request.app[GUARD], request.app[CASES]
    if not guard.accounts:
        return error_response("no accounts are configured: fraud_console.py adduser NAME", 403)
    try:
        body = await request.json()
        name, password = str(body["user"]), str(body["password"])
    except (ValueError, KeyError, TypeError):
        return error_response("send {\"user\": ..., \"password\": ...}", 400)
    keys = (f"user:{name[:64]}", f"remote:{request.remote}")
    if guard.throttled(*keys):
        return error_response(f"too many failed sign-ins: wait {SIGN_IN_WINDOW_S / 60:.0f} minutes", 429)
    user = await asyncio.to_thread(authenticate, guard.users, name, password)
    if user is None:
        guard.failed(*keys)
        await asyncio.to_thread(cases.audit, name[:64] if is_text(name) else "?", "sign-in-refused", "",
                                {"remote": request.remote})
        return error_response("wrong user name or password", 401)
    session = guard.sessions.start(user)
    await asyncio.to_thread(cases.audit, user.name, "sign-in", "", {"role": user.role, "remote": request.remote})
    response = json_response({"accounts": True, "user": user.name, "role": user.role, "csrf": session.csrf})
    response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="Strict", path="/",
                        secure=request.scheme == "https")
    return response


async def logout(request: web.Request) -> web.Response:
    session: Session | None = request.get(SESSION)
    if session is not None:
        request.app[GUARD].sessions.end(session.token)
        await asyncio.to_thread(request.app[CASES].audit, session.user.name, "sign-out")
    response = json_response({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def _case_call(role: str, call: Callable[[CaseWork, User, web.Request, Any], Any], *, body: bool = False,
               ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A case or list handler: the user's role checked, ``call`` run in a worker thread, its refusals as statuses."""

    async def handler(request: web.Request) -> web.Response:
        user = _user(request, role)
        data = None
        if body:
            try:
                data = await request.json()
            except ValueError:
                return error_response("the body must be JSON", 400)
            if not isinstance(data, dict):
                return error_response("the body must be a JSON object", 400)
        try:
            return json_response(await asyncio.to_thread(call, request.app[CASES], user, request, data))
        except CaseError as exc:
            return error_response(str(exc), exc.status)
        except BadRequest as exc:
            return error_response(str(exc), 400)
        except PipelineError as exc:
            log.warning("%s: %s", request.path, exc)
            return error_response(str(exc), 502)

    return handler


def _ttl(data: dict[str, Any]) -> float | None:
    ttl = data.get("ttl")
    if ttl in (None, ""):
        return None
    try:
        return duration_s(str(ttl))
    except ValueError as exc:
        raise BadRequest(f"ttl: {exc}") from None


def _resolve(cases: CaseWork, user: User, request: web.Request, data: Any) -> Any:
    verdict, note = data.get("verdict"), data.get("note", "")
    if verdict not in VERDICTS:
        raise BadRequest(f"verdict must be one of {', '.join(VERDICTS)}")
    if not is_text(note) or len(note) > 2000:
        raise BadRequest("note must be UTF-8 text of at most 2000 characters")
    action = None
    if data.get("list"):
        if not user.may(ADMIN):
            raise CaseError(f"{user.name} is a {user.role}: adding to a list needs admin", 403)
        value = data.get("value")
        if not is_text(value) or not value:
            raise BadRequest("value: which value of the payment to add to the list")
        action = (str(data["list"]), value, _ttl(data))
    snooze = None
    if data.get("snooze_rule"):
        seconds = _ttl({"ttl": data.get("snooze_for") or "7d"})
        assert seconds is not None
        snooze = (str(data["snooze_rule"]), seconds)
    return cases.resolve(request.match_info["id"], user.name, verdict, note, action, snooze).to_dict()


def _list_add(cases: CaseWork, user: User, request: web.Request, data: Any) -> Any:
    value, reason = data.get("value"), data.get("reason", "")
    if not is_text(value) or not value or not is_text(reason):
        raise BadRequest("value (UTF-8 text) is required; reason is UTF-8 text")
    return cases.add_to_list(user.name, request.match_info["name"], value, _ttl(data), reason).to_dict()


def _list_remove(cases: CaseWork, user: User, request: web.Request, data: Any) -> Any:
    value = data.get("value")
    if not is_text(value) or not value:
        raise BadRequest("value (UTF-8 text) is required")
    cases.remove_from_list(user.name, request.match_info["name"], value)
    return {"ok": True}


def _precision(cases: CaseWork, user: User, request: web.Request, data: Any) -> Any:
    k = _int(request.query, "k") or 100
    if k < 1:
        raise BadRequest("k must be 1 or more")
    return cases.precision(k)


@web.middleware
async def no_stack_traces(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Any failure left is logged here and shown to the page as one line."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api/"):
            return error_response(exc.reason, exc.status)
        raise
    except Exception as exc:  # the page gets a line, the log the whole story
        log.exception("%s failed", request.path)
        return error_response(f"{type(exc).__name__}: {exc}", 500)


def make_app(monitor: Monitor, view: ClusterView, stop: threading.Event, latency: DecisionLatency | None = None,
             cases: CaseWork | None = None, guard: Guard | None = None) -> web.Application:
    app = web.Application(middlewares=[guarded, no_stack_traces])
    app.on_response_prepare.append(security_headers)
    app[MONITOR], app[VIEW], app[STOP] = monitor, view, stop
    app[LATENCY] = latency if latency is not None else DecisionLatency([])
    app[GUARD] = guard if guard is not None else Guard({"127.0.0.1", "localhost"}, {})
    if cases is not None:
        app[CASES] = cases
    app.router.add_get("/api/session", session_info)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/cases", _case_call(VIEWER, lambda c, u, r, d: c.queue()))
    app.router.add_get("/api/cases/{id}", _case_call(VIEWER, lambda c, u, r, d: c.case(r.match_info["id"])))
    app.router.add_post("/api/cases/{id}/claim", _case_call(
        ANALYST, lambda c, u, r, d: c.claim(r.match_info["id"], u.name)))
    app.router.add_post("/api/cases/{id}/release", _case_call(
        ANALYST, lambda c, u, r, d: c.release(r.match_info["id"], u.name)))
    app.router.add_post("/api/cases/{id}/resolve", _case_call(ANALYST, _resolve, body=True))
    app.router.add_get("/api/lists", _case_call(VIEWER, lambda c, u, r, d: c.lists()))
    app.router.add_post("/api/lists/{name}/add", _case_call(ADMIN, _list_add, body=True))
    app.router.add_post("/api/lists/{name}/remove", _case_call(ADMIN, _list_remove, body=True))
    app.router.add_get("/api/precision", _case_call(VIEWER, _precision))
    app.router.add_get("/", index)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/brokers", _view_call(ClusterView.brokers))
    app.router.add_get("/api/topics", _view_call(ClusterView.topics))
    app.router.add_get("/api/groups", _view_call(ClusterView.groups))
    app.router.add_get("/api/messages", messages)
    app.router.add_static("/static/", STATIC)
    return app
