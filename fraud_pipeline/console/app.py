"""The console's web server (aiohttp): the page, its event stream and the cluster look-ups.

- ``GET /``: the page (``static/``: HTML, script and style; nothing from the internet);
- ``GET /api/events``: server-sent events, one ``state`` event (Monitor.state, with the detectors'
  ``decision_latency`` when the console reads their metrics) about every second;
- ``GET /api/brokers``, ``/api/topics``, ``/api/groups``: Kafdrop's view (ClusterView);
- ``GET /api/messages?topic=&partition=&count=&offset=|time=``: the message browser.

Failures reach the page as ``{"error": "..."}`` with a 4xx/5xx status (403: the console's
user may not see it; 502: Kafka failed), never a stack trace.
Read-only: nothing here writes to Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from ..clients import ClientError, NotAuthorizedError
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
    try:
        while not stop.is_set():
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
             ) -> web.Application:
    app = web.Application(middlewares=[no_stack_traces])
    app[MONITOR], app[VIEW], app[STOP] = monitor, view, stop
    app[LATENCY] = latency if latency is not None else DecisionLatency([])
    app.router.add_get("/", index)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/brokers", _view_call(ClusterView.brokers))
    app.router.add_get("/api/topics", _view_call(ClusterView.topics))
    app.router.add_get("/api/groups", _view_call(ClusterView.groups))
    app.router.add_get("/api/messages", messages)
    app.router.add_static("/static/", STATIC)
    return app
