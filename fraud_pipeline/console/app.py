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
import ipaddress
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
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
POLLS = ("/api/events", "/api/session", "/api/cases")
"""What the page asks for by itself, on a timer: not a sign that the user is there."""
SIGN_IN_FAILURES = 5
SIGN_IN_WINDOW_S = 300.0
"""After SIGN_IN_FAILURES sign-in attempts of a name or from an address in this long (a success not counted), it must wait."""
THROTTLE_KEYS = 10_000
"""Names and addresses the throttle remembers; past it the oldest not locked out are forgotten (locked ones last)."""
HASHERS = 2
"""Threads that check passwords (scrypt, about 50 ms of a core each), apart from every other worker."""
HASH_QUEUE = 8
"""Sign-ins waiting for a hasher at most; more are answered 503 at once."""
MAX_BODY_BYTES = 64 * 1024
"""The largest request body taken; a larger one is answered 413 before it is read."""
MAX_REASON_CHARS = 2000
"""Notes and reasons, as they reach the audit trail."""
HSTS = "max-age=31536000"
STREAMS_PER_USER = 5
"""Live event streams a user (or, without accounts, the console) may hold open at once."""
STREAMS = 200
"""Live event streams open at once in all."""
ANONYMOUS = User("anonymous", VIEWER, "")
"""What a request without a session may reach when accounts are configured (and the static files)."""


class Throttle:
    """Sign-in attempts per key (``user:NAME``, ``remote:ADDRESS``), each counted before its password is checked.

    ``admit`` refuses a key with SIGN_IN_FAILURES attempts in the window, and a name with an attempt in flight;
    ``settle`` takes back a successful attempt. At most THROTTLE_KEYS keys are kept: the least recently tried that
    are not locked out are forgotten first, so junk names cannot push a locked one out.
    """

    def __init__(self, limit: int = SIGN_IN_FAILURES, window_s: float = SIGN_IN_WINDOW_S, keys: int = THROTTLE_KEYS) -> None:
        self._limit, self._window_s, self._keys = limit, window_s, keys
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._attempts.get(key)
        while times and now - times[0] > self._window_s:
            times.popleft()
        return times

    def admit(self, name_key: str, *keys: str) -> str | None:
        """Count an attempt under every key, or say why not (throttled, or the name's attempt under way)."""
        now = time.monotonic()
        with self._lock:
            if any((times := self._recent(key, now)) is not None and len(times) >= self._limit for key in (name_key, *keys)):
                return f"too many sign-in attempts: wait {self._window_s / 60:.0f} minutes"
            if name_key in self._in_flight:
                return "a sign-in of this name is under way: try again in a moment"
            self._in_flight.add(name_key)
            for key in (name_key, *keys):
                self._attempts.setdefault(key, deque(maxlen=self._limit)).append(now)
                self._attempts.move_to_end(key)
            self._evict(now)
        return None

    def settle(self, name_key: str, *keys: str, succeeded: bool) -> None:
        """The attempt is over; a success is taken back from the count."""
        with self._lock:
            self._in_flight.discard(name_key)
            if succeeded:
                for key in (name_key, *keys):
                    times = self._attempts.get(key)
                    if times:
                        times.pop()

    def _evict(self, now: float) -> None:
        if len(self._attempts) <= self._keys:
            return
        for key in [k for k in self._attempts if k not in self._in_flight]:  # oldest first
            times = self._recent(key, now)
            if times is None or len(times) < self._limit:
                del self._attempts[key]
                if len(self._attempts) <= self._keys:
                    return
        while len(self._attempts) > self._keys:  # all locked out: the oldest lock goes (it is the nearest its end)
            self._attempts.popitem(last=False)

    def attempts(self, key: str) -> int:
        """Attempts under ``key`` in the window (at most the limit)."""
        with self._lock:
            times = self._recent(key, time.monotonic())
            return len(times) if times is not None else 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._attempts)


def address_key(address: str | None) -> str:
    """The throttle's key of a client address: an IPv6 address by its /64 (one host's whole range), IPv4 as it is."""
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return f"remote:{address}"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return f"remote:{parsed.ipv4_mapped}"
        return f"remote:{ipaddress.ip_network(f'{parsed}/64', strict=False)}"
    return f"remote:{parsed}"


class Guard:
    """Who may reach the console: its Host names, its users and their sessions, the sign-in throttle, and how a
    request came (https or not, from which client: a trusted proxy's headers are believed, no one else's)."""

    def __init__(self, hosts: set[str], users: dict[str, User], sessions: Sessions | None = None, *,
                 tls: bool = False, trusted_proxy: str | None = None) -> None:
        self.hosts = {host.lower() for host in hosts}
        self.users = users
        self.accounts = bool(users)
        """Accounts were configured at start: the console stays signed-in only, even if the file empties later."""
        self.sessions = sessions if sessions is not None else Sessions()
        self.throttle = Throttle()
        self.tls = tls
        self.trusted_proxy = trusted_proxy
        self.hashers = ThreadPoolExecutor(HASHERS, thread_name_prefix="console-scrypt")
        self.hashing = 0
        """Sign-ins waiting for, or in, a hasher (on the event loop's thread only)."""
        self.streams: dict[str, int] = {}
        """Open event streams by user (on the event loop's thread only)."""

    def use_users(self, users: dict[str, User]) -> list[str]:
        """The users file changed: these users from now on; the names whose sessions ended (removed or changed)."""
        self.users = users
        return self.sessions.keep_only(users)

    def from_proxy(self, request: web.Request) -> bool:
        return self.trusted_proxy is not None and request.remote == self.trusted_proxy

    def https(self, request: web.Request) -> bool:
        """Whether the browser speaks https to the console: served so, or so says the trusted proxy."""
        if self.tls:
            return True
        return self.from_proxy(request) and request.headers.get("X-Forwarded-Proto", "").lower() == "https"

    def client(self, request: web.Request) -> str | None:
        """The client's address: the trusted proxy's last X-Forwarded-For entry (the one it added), else the peer's."""
        if self.from_proxy(request):
            forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
            if forwarded:
                return forwarded
        return request.remote

    def cookie(self, request: web.Request) -> str:
        """The session cookie's name: ``__Host-`` prefixed (Secure, no Domain, Path=/) over https."""
        return f"__Host-{SESSION_COOKIE}" if self.https(request) else SESSION_COOKIE

    def session(self, request: web.Request, *, touch: bool = True) -> Session | None:
        return self.sessions.get(request.cookies.get(self.cookie(request)), touch=touch)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(message: str, status: int) -> web.Response:
    return json_response({"error": message}, status)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the whole state once a second, until the page goes or the console stops."""
    monitor, stop, latency = request.app[MONITOR], request.app[STOP], request.app[LATENCY]
    guard, session = request.app[GUARD], request.get(SESSION)
    user = session.user.name if session is not None else ""
    if guard.streams.get(user, 0) >= STREAMS_PER_USER or sum(guard.streams.values()) >= STREAMS:
        return error_response("too many live views open: close one", 429)
    guard.streams[user] = guard.streams.get(user, 0) + 1
    try:
        return await _stream(request, monitor, stop, latency, guard, session)
    finally:
        guard.streams[user] -= 1
        if not guard.streams[user]:
            del guard.streams[user]


async def _stream(request: web.Request, monitor: Monitor, stop: threading.Event, latency: DecisionLatency, guard: Guard,
                  session: Session | None) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        while not stop.is_set():
            if guard.accounts and (session is None or guard.sessions.get(session.token, touch=False) is None):
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
    if request.app[GUARD].https(request):
        response.headers.setdefault("Strict-Transport-Security", HSTS)


@web.middleware
async def guarded(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Host, Origin, CSRF and session checks before any handler."""
    guard = request.app[GUARD]
    host = request.headers.get("Host", "").lower()
    if host not in guard.hosts:
        return error_response(f"this console does not answer to the host {host!r}", 421)
    # The event stream and the page's polls are not the user's doing: they do not keep an idle session alive.
    session = guard.session(request, touch=request.method in WRITES or request.path not in POLLS)
    if request.method in WRITES:
        origin = request.headers.get("Origin")
        # The console's own scheme only: an https console (served so, or behind the trusted proxy) refuses http.
        if origin is None or origin.lower() != f"{'https' if guard.https(request) else 'http'}://{host}":
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
    client = guard.client(request)
    name_key, keys = f"user:{name[:64]}", (address_key(client),)
    refusal = guard.throttle.admit(name_key, *keys)  # counted now, before the password is checked
    if refusal is not None:
        return error_response(refusal, 429)
    user, checked = None, False
    try:
        if guard.hashing >= HASHERS + HASH_QUEUE:
            return error_response("too many sign-ins at once: try again in a moment", 503)
        guard.hashing += 1
        try:
            checked = True
            user = await asyncio.get_running_loop().run_in_executor(guard.hashers, authenticate, guard.users, name, password)
        finally:
            guard.hashing -= 1
    finally:
        # taken back: a success, and an attempt never checked (503)
        guard.throttle.settle(name_key, *keys, succeeded=user is not None or not checked)
    if user is None:
        # No typed name in the audit: it may be a password typed in the wrong field.
        await asyncio.to_thread(cases.audit, "?", "sign-in-refused", "",
                                {"remote": client, "attempts": guard.throttle.attempts(keys[0])})
        return error_response("wrong user name or password", 401)
    session = guard.sessions.start(user)
    await asyncio.to_thread(cases.audit, user.name, "sign-in", "", {"role": user.role, "remote": client})
    response = json_response({"accounts": True, "user": user.name, "role": user.role, "csrf": session.csrf})
    response.set_cookie(guard.cookie(request), session.token, httponly=True, samesite="Strict", path="/",
                        secure=guard.https(request))
    return response


async def logout(request: web.Request) -> web.Response:
    session: Session | None = request.get(SESSION)
    if session is not None:
        request.app[GUARD].sessions.end(session.token)
        await asyncio.to_thread(request.app[CASES].audit, session.user.name, "sign-out")
    response = json_response({"ok": True})
    guard = request.app[GUARD]
    response.del_cookie(guard.cookie(request), path="/", secure=guard.https(request), httponly=True, samesite="Strict")
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
    if not is_text(note) or len(note) > MAX_REASON_CHARS:
        raise CaseError(f"note must be UTF-8 text of at most {MAX_REASON_CHARS} characters", 413)
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
    if len(reason) > MAX_REASON_CHARS:
        raise CaseError(f"reason: at most {MAX_REASON_CHARS} characters", 413)
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
    except Exception as exc:  # the page gets a line (a signed-in user's: what failed), the log the whole story
        log.exception("%s failed", request.path)
        if request.get(SESSION) is None and request.app[GUARD].accounts:
            return error_response("the console failed to answer; its log says why", 500)
        return error_response(f"{type(exc).__name__}: {exc}", 500)


def make_app(monitor: Monitor, view: ClusterView, stop: threading.Event, latency: DecisionLatency | None = None,
             cases: CaseWork | None = None, guard: Guard | None = None) -> web.Application:
    app = web.Application(middlewares=[guarded, no_stack_traces], client_max_size=MAX_BODY_BYTES)
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
