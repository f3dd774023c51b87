"""The HTTP server: KServe v2 / Open Inference Protocol endpoints over starlette.

    decode (codec) -> admission queue (admission) -> Engine.submit -> asyncio future
    -> encode (codec)

One engine per model. The event loop never blocks on the engine: each engine future's done
callback hops to the loop once (`call_soon_threadsafe`, as `asyncio.wrap_future` does) to
resolve the handler's asyncio future *and* free the request's engine slot in the same hop;
blocking calls (closing an engine, loading a model) run in threads.

Every request that reaches `infer` gets exactly one response: scores, or an error that says
why (4xx bad input, 503 shed or shutting down, 504 timeout, 500 a lane failed).

    server = RecschedServer({"rmc1": load_model("rmc1")}, preset("dynamic"))
    serve(server, "127.0.0.1", 8000)        # SIGTERM: drain in-flight work, refuse new (503)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import itertools
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

import recsched
from recsched.config import EngineConfig, preset
from recsched.engine import Engine, EngineClosed, QueryFailed, QueueFull
from recsched.metrics.trace import TraceRecorder, write_trace
from recsched.models.base import ModelAdapter
from recsched.server import codec
from recsched.server.admission import (
    AdmissionQueue,
    Expired,
    Shed,
    Ticket,
    class_for_priority,
    priority_order,
)
from recsched.server.guard import TailGuard
from recsched.server.health import LaneWatchdog
from recsched.server.metrics import ServerMetrics, Timings
from recsched.server.predict import QueryCost, whole_s_from_profile
from recsched.types import DEFAULT_CLASS, PriorityClass, Query

log = logging.getLogger("recsched.server")
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "schedule_policy",
    "model_repository",
)


@dataclass(frozen=True)
class ServerConfig:
    """Knobs of the HTTP layer (the engine's are in `EngineConfig`).

    queue_capacity: requests waiting for an engine slot, all classes together.
    window: requests inside the engine at once (None: 2 per lane); the rest wait, by value
    (small: a high-value request waits behind at most this much admitted work).
    hang_s: a lane task running longer than this is a hung lane. drain_timeout_s: how long
    SIGTERM waits for in-flight requests. version: the model version reported.
    decode_in_thread_bytes: bodies this large are decoded in a worker thread, not the loop.
    engine_factory(adapter, config): builds a model's engine (None: an in-process `Engine`;
    `recsched.serving.ray_deploy` passes one that forwards to Ray Serve replicas).
    configure(name, adapter, config): the configuration a model is served with and the
    `Engine` extras it needs, `(config, {"graph": .., "cost": ..})`, for a preset that names
    more than its fields: the `tuned` request knobs (the tuner's cache) and the profiled
    cost model of the operator-level policies (`recsched serve` wires
    `recsched.server.cli.preset_resolver`); called when a model is loaded and when it is
    reconfigured (a ValueError there is the client's: 400). None: served as given.
    admission: `count` (engine places by count: the lowest class holds at most half the
    window) or `predicted` (by predicted work, `recsched.server.admission`: lower classes
    enter the engine only while its backlog is under `reserve` x the top class's SLA, and
    are shed when their predicted wait passes `wait_share` of their SLA and they would miss
    it, on the JSON header alone when they can). `predicted` needs every class to have an
    SLA (`sla_ms` gives one to those without) and a cost: `cost(adapter, config)` returns
    `n_items -> predicted lane-seconds`; None: the model's profile (`recsched profile`,
    measured once and cached), see `recsched.server.predict`.
    keep_int32: with `wire_ids="int32"`, hand INT32 ids to the engine as they arrive when the
    model scores them as it scores int64 ones (`ModelAdapter.accepts_int32_ids`, checked
    when the model is loaded; not with an `engine_factory`), instead of widening them on the
    event loop.
    guard: with several classes and an SLA for the most valuable, the target of the tail
    guard (`recsched.server.guard`): classes below the top are admitted at a share steered
    so that the top class's slowest requests use at most this share of their waiting budget
    (None: no guard).
    wire_ids: `int32` (index inputs whose ids fit travel as INT32, half the bytes; the
    metadata and config say so) or `model` (the model's own dtype, INT64), `codec.wire_dtype`.
    """

    limits: codec.Limits = field(default_factory=codec.Limits)
    queue_capacity: int = 256
    window: int | None = None
    hang_s: float = 30.0
    watchdog_s: float = 0.2
    drain_timeout_s: float = 30.0
    version: str = "1"
    decode_in_thread_bytes: int = 8 << 20
    engine_factory: Callable[[ModelAdapter, EngineConfig], Any] | None = None
    configure: (
        Callable[[str, ModelAdapter, EngineConfig], tuple[EngineConfig, dict[str, Any]]] | None
    ) = None
    trace_path: str | None = None
    admission: str = "count"
    reserve: float = 0.25
    wait_share: float = 0.5
    sla_ms: float | None = None
    cost: Callable[[ModelAdapter, EngineConfig], Callable[[int], float]] | None = None
    wire_ids: str = "int32"
    keep_int32: bool = True
    guard: float | None = None

    def __post_init__(self) -> None:
        if self.wire_ids not in codec.WIRE_IDS:
            raise ValueError(
                f"wire_ids is one of {', '.join(codec.WIRE_IDS)}, not {self.wire_ids!r}"
            )
        if self.admission not in ("count", "predicted"):
            raise ValueError(f"admission is 'count' or 'predicted', not {self.admission!r}")
        if not (0.0 < self.reserve <= 1.0 and 0.0 <= self.wait_share <= 1.0):
            raise ValueError("reserve is in (0, 1] and wait_share in [0, 1]: shares of an SLA")
        if self.guard is not None and not 0.0 < self.guard <= 1.0:
            raise ValueError(f"guard is a share of the waiting budget in (0, 1], not {self.guard}")

    def window_for(self, cfg: EngineConfig) -> int:
        return self.window or 2 * (cfg.lanes + cfg.accel_lanes)


def tail_guard(classes: Sequence[PriorityClass], target: float | None) -> TailGuard | None:
    """The tail guard over `classes` (most valuable first) at `target`, when it applies:
    several classes, the top one with an SLA."""
    if target is None or len(classes) < 2 or not classes[0].sla_ms:
        return None
    return TailGuard(classes[0].sla_ms / 1e3, [c.name for c in classes[1:]], target=target)


def widened(inputs: dict[str, Any], adapter: ModelAdapter) -> dict[str, Any]:
    """`inputs` with any index input not in the model's dtype converted to it (INT32 ids
    decoded for an engine that took them, then swapped for one that does not)."""
    if all(inputs[s.name].dtype == s.dtype for s in adapter.inputs if s.name in inputs):
        return inputs
    return {
        k: v.to(s.dtype) if (s := adapter.spec(k)).kind == "index" and v.dtype != s.dtype else v
        for k, v in inputs.items()
    }


def lanes_of(cfg: EngineConfig) -> int:
    """Lanes an engine of `cfg` runs (CPU lanes, plus accelerator lanes when offloading)."""
    accel = max(1, cfg.accel_lanes) if cfg.offload_threshold is not None else 0
    return max(1, cfg.lanes + accel)


def profile_cost(adapter: ModelAdapter, config: EngineConfig) -> QueryCost:
    """The default cost of `predicted` admission: the model's cached profile."""
    from recsched.bench import calibrate

    prof = calibrate.profile(adapter, threads=config.threads_per_lane)
    return QueryCost(whole_s_from_profile(prof), config)


class ServeError(Exception):
    """An accepted request that ends in an error: HTTP status, metrics reason, message."""

    def __init__(self, status: int, message: str, reason: str = "OTHER") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(codec.error_body(message), status, headers, media_type="application/json")


Reply = tuple[int, bytes, Mapping[str, str]]  # status, body, headers (no content-length)
_JSON = {"content-type": "application/json"}


def error_reply(status: int, message: str) -> Reply:
    return status, codec.error_body(message), _JSON


_INFER_HEADERS = (b"content-length", b"content-encoding", b"inference-header-content-length")


def infer_headers(scope: Scope) -> dict[str, str]:
    """The request headers the infer path reads, by lower-case name."""
    out = {}
    for k, v in scope["headers"]:
        k = k.lower()
        if k in _INFER_HEADERS:
            out[k.decode()] = v.decode("latin-1")
    return out


class BodyReader:
    """A request body straight from ASGI `receive`, refusing (413) one over `limit` bytes.

    With a Content-Length, the chunks are copied once into an uninitialised buffer of that
    size (no zero-filling, no regrowing: at ~600 KB a request, each pass over the body
    counts); `fill(n)` reads until the first `n` bytes are in (to peek at the JSON header)
    and `body()` reads the rest. Mutable: the codec's binary tensors are views of it.
    Chunked bodies (no Content-Length) grow a bytearray.
    """

    def __init__(self, receive: Receive, announced: str | None, limit: int) -> None:
        size = int(announced) if announced is not None and announced.isdigit() else None
        if size is not None and size > limit:
            raise codec.RequestError(f"body of {size} bytes exceeds the limit of {limit}", 413)
        self.receive, self.size, self.limit = receive, size, limit
        self.buf: bytearray | np.ndarray = bytearray() if size is None else np.empty(size, np.uint8)
        self.pos = 0
        self.done = False

    async def fill(self, n: int) -> None:
        """Read until at least `n` bytes are in, or the body ends."""
        view = memoryview(self.buf) if self.size is not None else None
        try:
            while not self.done and self.pos < n:
                msg = await self.receive()
                if msg["type"] == "http.disconnect":
                    raise codec.RequestError(
                        "the client disconnected before sending the whole body"
                    )
                chunk = msg.get("body", b"")
                end = self.pos + len(chunk)
                if view is None:
                    if end > self.limit:
                        why = f"body exceeds the limit of {self.limit} bytes"
                        raise codec.RequestError(why, 413)
                    self.buf += chunk  # type: ignore[operator]
                elif end > len(view):
                    raise codec.RequestError(
                        f"body longer than its Content-Length of {self.size} bytes"
                    )
                else:
                    view[self.pos : end] = chunk
                self.pos = end
                self.done = not msg.get("more_body", False)
        finally:
            if view is not None:
                view.release()

    def head(self, n: int) -> bytes:
        """A copy of the first `n` bytes read (after `fill(n)`)."""
        return bytes(self.buf[:n])

    async def body(self) -> bytearray | np.ndarray:
        await self.fill(self.limit + 1)
        if self.size is not None and self.pos != self.size:
            raise codec.RequestError(
                f"body of {self.pos} bytes, but its Content-Length says {self.size}"
            )
        return self.buf


async def read_asgi_body(
    receive: Receive, announced: str | None, limit: int
) -> bytearray | np.ndarray:
    """The whole request body (`BodyReader`)."""
    return await BodyReader(receive, announced, limit).body()


class EarlyShed(Exception):
    """Shed on the JSON header alone, before the binary body is read (a 503)."""

    def __init__(self, why: str, cls: PriorityClass) -> None:
        super().__init__(why)
        self.cls = cls


_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class ServerApp:
    """The server's ASGI app: `POST /v2/models/{m}[/versions/{v}]/infer` goes straight to
    `RecschedServer.infer` (no starlette router, middleware, Request or Response on the hot
    path); everything else, lifespan included, to the starlette app (`.starlette`)."""

    def __init__(self, server: RecschedServer, starlette: Starlette) -> None:
        self.server = server
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            m = _INFER_PATH.fullmatch(path)
            if m is not None:
                return await self.infer(m.group(1), m.group(2), scope, receive, send)
        await self.starlette(scope, receive, send)

    async def infer(
        self, model: str, version: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            status, body, headers = await self.server.infer(model, version, scope, receive)
        except Exception as e:  # a bug of ours: still one response, and it says so
            log.exception("infer failed")
            status, body, headers = error_reply(500, f"internal error: {type(e).__name__}")
        raw = [(b"content-length", b"%d" % len(body))]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def _consume(f: asyncio.Future) -> None:
    """Retrieve an abandoned future's outcome (no 'exception never retrieved' noise)."""
    if not f.cancelled():
        f.exception()


def _engine_error(exc: BaseException) -> ServeError:
    if isinstance(exc, Shed):
        return ServeError(503, f"overloaded, request shed: {exc}", "REJECTED")
    if isinstance(exc, Expired):
        return ServeError(504, f"timeout: {exc}", "REJECTED")
    if isinstance(exc, QueueFull):
        return ServeError(503, f"overloaded: {exc}", "REJECTED")
    if isinstance(exc, EngineClosed):
        return ServeError(503, "shutting down: the model's engine is closed", "CANCELED")
    if isinstance(exc, QueryFailed):
        first = str(exc).splitlines()[0] if str(exc) else "failed"
        return ServeError(500, f"internal failure: {first}", "BACKEND")
    return ServeError(500, f"internal failure: {type(exc).__name__}: {exc}", "OTHER")


class ModelHost:
    """One served model: its adapter, engine, admission queue and state.

    Runs on the event loop: `run` and `_pump` are only called from the loop thread; the
    engine's completion callbacks hop back to it with `call_soon_threadsafe`.
    """

    def __init__(
        self,
        name: str,
        adapter: ModelAdapter,
        config: EngineConfig,
        classes: Sequence[PriorityClass],
        sc: ServerConfig,
    ) -> None:
        self.name = name
        self.adapter = adapter
        self.extras: dict[str, Any] = {}  # Engine(graph=, cost=) of the configuration
        if sc.configure is not None:
            config, self.extras = sc.configure(name, adapter, config)
        self.config = config
        self.sc = sc
        self.engine: Engine | None = None
        self.state = "UNAVAILABLE"
        self.reason = "not started"
        self.cost: Callable[[int], float] | None = None
        if sc.admission == "predicted":
            self.cost = (sc.cost or profile_cost)(adapter, config)
        self.admission = AdmissionQueue(
            classes, sc.queue_capacity, sc.window_for(config), cost_s=self.cost,
            lanes=lanes_of(config), reserve=sc.reserve, wait_share=sc.wait_share,
            guard=tail_guard(classes, sc.guard),
        )  # fmt: skip
        if sc.admission == "predicted" and not self.admission.predicted:
            log.warning("model %s: predicted admission needs an SLA for every class "
                        "(ServerConfig.sla_ms, --sla-ms): admitting by count", name)  # fmt: skip
        self.keep_int32 = self._keeps_int32(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._qids = itertools.count()
        self.trace: TraceRecorder | None = None  # lane trace (`serve --trace`), set by the server

    # -- lifecycle (blocking: call from a thread when the loop runs) --------------------
    def start(self) -> None:
        self.engine = self._new_engine(self.config, self.extras)
        self.state, self.reason = "READY", ""

    def close(self, reason: str = "unloaded") -> None:
        self.state, self.reason = "UNAVAILABLE", reason
        eng, self.engine = self.engine, None
        if eng is not None:
            eng.close(drain=True, timeout=self.sc.drain_timeout_s)

    def swap(self, config: EngineConfig) -> Engine | None:
        """Serve with a new configuration; returns the old engine (to close once drained).
        ValueError (nothing changed) if `ServerConfig.configure` cannot resolve it."""
        extras = self.extras
        if self.sc.configure is not None:
            config, extras = self.sc.configure(self.name, self.adapter, config)
        new = self._new_engine(config, extras)
        old, self.engine, self.config, self.extras = self.engine, new, config, extras
        self.keep_int32 = self._keeps_int32(config)
        self.admission.window = self.sc.window_for(config)
        self.admission.lanes = lanes_of(config)
        if isinstance(self.cost, QueryCost):
            self.cost.reconfigure(config)
        return old

    def busy(self) -> int:
        return self.admission.queued() + self.admission.running

    def _keeps_int32(self, config: EngineConfig) -> bool:
        """Whether INT32 ids from the wire go to this engine as they are (`keep_int32`)."""
        sc = self.sc
        if not (sc.keep_int32 and sc.wire_ids == "int32" and sc.engine_factory is None):
            return False
        return self.adapter.accepts_int32_ids(config.compiled)

    def _new_engine(self, config: EngineConfig, extras: dict[str, Any]) -> Engine:
        make = self.sc.engine_factory
        if make is not None:
            eng = make(self.adapter, config)
        else:
            eng = Engine(self.adapter, config, validate=False, **extras)
        eng.start()
        if self.trace is not None and isinstance(eng, Engine):
            from recsched.bench.run import attach_trace

            attach_trace(eng, self.trace)
        return eng

    # -- serving (event loop) -------------------------------------------------------------
    async def run(
        self, req: codec.InferRequest, cls: PriorityClass, t: Timings, screened: bool = False
    ) -> Any:
        """Queue, run and await one request; returns scores [n_items, out_dim].
        `screened`: admission let it pass on its JSON header (`refuse_early`)."""
        self.loop = asyncio.get_running_loop()
        deadline = t.arrival + req.timeout_us / 1e6 if req.timeout_us else math.inf
        waiter = self.loop.create_future()
        ticket = Ticket(next(self._qids), cls, req.n_items, t.arrival, deadline)
        ticket.screened = screened
        ticket.payload, ticket.waiter = req, waiter
        for shed, why in self.admission.offer(ticket):
            if not shed.waiter.done():
                shed.waiter.set_exception(Shed(why))
        self._pump()
        if not waiter.done():
            if deadline == math.inf:  # (a cancelled handler cancels the waiter: `_pump`
                with contextlib.suppress(Exception):  # frees its place once it enters)
                    await waiter
            else:
                await asyncio.wait((waiter,), timeout=self._left(deadline))
        if not waiter.done():
            self.admission.cancel(ticket, "expired")
            waiter.cancel()
            raise ServeError(504, self._late(t, req, started=False), "REJECTED")
        if waiter.exception() is not None:
            raise _engine_error(waiter.exception())
        t.entered = ticket.entered_s
        wrapped = waiter.result()  # an asyncio future, resolved from the engine's
        if deadline == math.inf:
            try:
                return await wrapped
            except asyncio.CancelledError:
                raise
            except Exception as e:
                raise _engine_error(e) from None
        done, _ = await asyncio.wait((wrapped,), timeout=self._left(deadline))
        if not done:
            wrapped.add_done_callback(_consume)
            raise ServeError(504, self._late(t, req, started=True), "REJECTED")
        if wrapped.exception() is not None:
            raise _engine_error(wrapped.exception())
        return wrapped.result()

    @staticmethod
    def _left(deadline: float) -> float | None:
        return None if deadline == math.inf else max(0.0, deadline - time.perf_counter())

    @staticmethod
    def _late(t: Timings, req: codec.InferRequest, started: bool) -> str:
        waited = (time.perf_counter() - t.arrival) * 1e3
        what = (
            "the work had started; its result is discarded"
            if started
            else "dropped from the queue before its work started"
        )
        limit = f"the request's timeout of {req.timeout_us} us"
        return f"timeout: {waited:.1f} ms passed, over {limit}; {what}"

    def _pump(self) -> None:
        """Move queued tickets into the engine while it has room (most valuable first)."""
        enter, dropped = self.admission.pop_ready(time.perf_counter())
        for t in dropped:
            if not t.waiter.done():
                t.waiter.set_exception(
                    Shed(t.why)
                    if t.state == "shed"
                    else Expired("timed out in the queue before its work started")
                )
        for t in enter:
            if t.waiter.done():  # its handler gave up meanwhile
                self.admission.finish(t)
                continue
            assert self.loop is not None
            outcome = self.loop.create_future()
            t.waiter.set_result(outcome)
            self._submit(t).add_done_callback(functools.partial(self._done_threadsafe, t, outcome))

    def _submit(self, t: Ticket) -> Future:
        req: codec.InferRequest = t.payload
        t.payload = None
        sla = t.cls.sla_ms / 1e3 if t.cls.sla_ms is not None else math.inf
        q = Query(t.seq, self.name, t.n_items, t.cls.name, t.cls.value, t.arrival_s,
                  min(t.deadline_s, t.arrival_s + sla))  # fmt: skip
        inputs = req.inputs if self.keep_int32 else widened(req.inputs, self.adapter)
        try:
            if self.engine is None:
                raise EngineClosed("the model is not loaded")
            return self.engine.submit(q, inputs)
        except Exception as e:  # never leave a ticket without an outcome
            fut: Future = Future()
            fut.set_exception(e)
            return fut

    def _done_threadsafe(self, t: Ticket, outcome: asyncio.Future, fut: Future) -> None:
        """The engine's future resolved (in a lane thread): one hop back to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._done, t, outcome, fut)

    def _done(self, t: Ticket, outcome: asyncio.Future, fut: Future) -> None:
        """Free the engine place, hand the result to the handler, let the next one in."""
        self.admission.finish(t)
        exc = fut.exception()
        if not outcome.done():
            if exc is not None:
                outcome.set_exception(exc)
            else:
                outcome.set_result(fut.result())
        if exc is None:
            self.admission.served(t, time.perf_counter())
        if exc is None and isinstance(self.cost, QueryCost) and isinstance(self.engine, Engine):
            self.cost.finished(t.n_items, self._busy_s)
        self._pump()

    def _busy_s(self) -> float:
        eng = self.engine
        return sum(lane.stats.busy_s for lane in eng.lanes) if eng is not None else 0.0


class RecschedServer:
    """The KServe v2 server: models, admission, metrics, watchdog, and the ASGI `app`.

    `adapters`: `{name: ModelAdapter}` to serve; `config`: their EngineConfig (a preset);
    `classes`: priority classes (`--classes`); `token`: bearer token of the state-changing
    endpoints (None: those endpoints refuse); `loader(name)`: loads a model not served yet
    (repository `load`).
    """

    def __init__(
        self,
        adapters: Mapping[str, ModelAdapter],
        config: EngineConfig | None = None,
        server_config: ServerConfig | None = None,
        classes: Sequence[PriorityClass] | None = None,
        token: str | None = None,
        loader: Callable[[str], ModelAdapter] | None = None,
    ) -> None:
        assert adapters, "serve at least one model"
        self.engine_config = config or preset("dynamic")
        self.config = sc = server_config or ServerConfig()
        self.classes = priority_order(
            [
                dataclasses.replace(c, sla_ms=sc.sla_ms) if c.sla_ms is None and sc.sla_ms else c
                for c in (classes or (DEFAULT_CLASS,))
            ]
        )
        self.token = token or None
        self.loader = loader
        self.hosts: dict[str, ModelHost] = {
            n: ModelHost(n, a, self.engine_config, self.classes, sc) for n, a in adapters.items()
        }
        if sc.trace_path:  # one trace process per model, one thread row per lane
            for pid, (n, h) in enumerate(self.hosts.items()):
                h.trace = TraceRecorder(pid=pid, process_name=n)
        self.metrics = ServerMetrics(sc.version)
        self.metrics.watch_engines(self.serving_engines)
        self.watchdog = LaneWatchdog(self.serving_engines, sc.hang_s, sc.watchdog_s, self._replaced)
        self.draining = False
        self._inflight = 0
        self._idle = threading.Event()
        self._idle.set()
        self.app = ServerApp(
            self,
            Starlette(
                routes=self._routes(),
                lifespan=self._lifespan,
                exception_handlers={HTTPException: self._http_error, Exception: self._crash},
            ),
        )

    # -- lifecycle --------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette):
        for h in self.hosts.values():
            await asyncio.to_thread(h.start)
        self.watchdog.start()
        try:
            yield
        finally:
            self.begin_drain()
            await asyncio.to_thread(self.wait_idle, self.config.drain_timeout_s)
            self.watchdog.stop()
            for h in self.hosts.values():
                await asyncio.to_thread(h.close, "server stopped")
            if self.config.trace_path:
                recorders = [h.trace for h in self.hosts.values() if h.trace is not None]
                write_trace(self.config.trace_path, recorders)

    def begin_drain(self) -> None:
        """Refuse new requests (503) from now on; in-flight ones finish."""
        self.draining = True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is in flight; False on timeout."""
        return self._idle.wait(timeout)

    def inflight(self) -> int:
        return self._inflight

    def serving_engines(self) -> dict[str, Engine]:
        return {n: h.engine for n, h in self.hosts.items() if h.engine is not None}

    def _replaced(self, model: str, lane: int, why: str) -> None:
        self.metrics.restarts.labels(model, str(lane), why.split(":")[0]).inc()

    # -- routes -----------------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        m, mv = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
        r = [
            Route("/v2", self.server_metadata),
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2/models/stats", self.stats),
            Route("/metrics", self.prometheus),
            Route("/v2/repository/index", self.repository_index, methods=["POST", "GET"]),
            Route("/v2/repository/models/{model}/load", self.load, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self.unload, methods=["POST"]),
            Route(
                "/v2/recsched/models/{model}/config", self.recsched_config, methods=["GET", "POST"]
            ),
            Route("/v2/systemsharedmemory/status", self.no_shm, methods=["GET", "POST"]),
            Route("/v2/systemsharedmemory/unregister", self.no_shm, methods=["POST"]),
            Route("/v2/cudasharedmemory/status", self.no_shm, methods=["GET", "POST"]),
            Route("/v2/cudasharedmemory/unregister", self.no_shm, methods=["POST"]),
        ]
        for base in (m, mv):
            r += [
                Route(base, self.model_metadata),
                Route(base + "/ready", self.model_ready),
                Route(base + "/config", self.model_config),
                Route(base + "/stats", self.stats),
                Route(base + "/infer", self._infer_route, methods=["POST"]),
            ]
        return r

    async def _infer_route(self, request: Request) -> Response:
        """Unreached: `ServerApp` answers POST .../infer first (the route gives other methods
        their 405)."""
        status, body, headers = await self.infer(
            request.path_params["model"], request.path_params.get("version"),
            request.scope, request.receive,
        )  # fmt: skip
        return Response(body, status, headers)

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    async def _crash(self, request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")

    def _host(self, request: Request) -> ModelHost:
        return self._host_named(request.path_params["model"], request.path_params.get("version"))

    def _host_named(self, name: str, version: str | None) -> ModelHost:
        host = self.hosts.get(name)
        if host is None:
            raise ServeError(404, f"unknown model '{name[:100]}'; serving: {', '.join(self.hosts)}")
        if version is not None and version != self.config.version:
            raise ServeError(
                404,
                f"model '{name}' has no version '{version[:20]}' (serving {self.config.version})",
            )
        return host

    # -- metadata and health ----------------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {"name": "recsched", "version": recsched.__version__, "extensions": list(EXTENSIONS)}
        )

    async def live(self, request: Request) -> Response:
        return Response(b"", 200)

    def is_ready(self) -> bool:
        hosts = [h for h in self.hosts.values() if h.reason != "unloaded"]
        return not self.draining and bool(hosts) and all(h.state == "READY" for h in hosts)

    async def ready(self, request: Request) -> Response:
        if self.is_ready():
            return Response(b"", 200)
        return error_response(503, "shutting down" if self.draining else "models not ready")

    async def model_metadata(self, request: Request) -> Response:
        try:
            h = self._host(request)
        except ServeError as e:
            return error_response(e.status, str(e))
        ad = h.adapter
        return JSONResponse(
            codec.model_metadata(
                h.name, ad.inputs, ad.out_dim, self.config.version, self.config.wire_ids
            )
        )

    async def model_ready(self, request: Request) -> Response:
        try:
            h = self._host(request)
        except ServeError as e:
            return error_response(e.status, str(e))
        if h.state == "READY" and not self.draining:
            return Response(b"", 200)
        return error_response(503, f"model '{h.name}' is not ready ({h.reason or 'shutting down'})")

    def _model_config(self, h: ModelHost) -> dict[str, Any]:
        ad = h.adapter
        return codec.model_config(
            h.name, ad.inputs, ad.out_dim, self.config.limits, h.config.to_dict(),
            len(self.classes), self.config.queue_capacity, self.config.wire_ids,
        )  # fmt: skip

    async def model_config(self, request: Request) -> Response:
        try:
            h = self._host(request)
        except ServeError as e:
            return error_response(e.status, str(e))
        return JSONResponse(self._model_config(h))

    async def stats(self, request: Request) -> Response:
        if "model" in request.path_params:
            try:
                hosts = [self._host(request)]
            except ServeError as e:
                return error_response(e.status, str(e))
        else:
            hosts = list(self.hosts.values())
        return JSONResponse(self.metrics.stats_json({h.name: h.engine for h in hosts}))

    async def prometheus(self, request: Request) -> Response:
        for h in self.hosts.values():
            for c in self.classes:
                self.metrics.queue_depth.labels(h.name, c.name).set(h.admission.queued(c.name))
            if h.admission.predicted:
                self.metrics.backlog.labels(h.name).set(h.admission.backlog_s())
                self.metrics.cost_scale.labels(h.name).set(getattr(h.cost, "scale", 1.0))
            if h.admission.guard is not None:
                for c, share in h.admission.guard.share.items():
                    self.metrics.guard_share.labels(h.name, c).set(share)
        body = self.metrics.render({n: h.engine for n, h in self.hosts.items()})
        return Response(body, 200, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def no_shm(self, request: Request) -> Response:
        if request.url.path.endswith("/status"):
            return JSONResponse([])
        return Response(b"", 200)  # nothing is ever registered: unregistering is a no-op

    # -- inference --------------------------------------------------------------------------------
    async def infer(self, model: str, version: str | None, scope: Scope, receive: Receive) -> Reply:
        """POST /v2/models/{m}/infer: exactly one response per request, never a 500 for input.

        Raw ASGI in, `(status, body, headers)` out (`ServerApp` sends it).
        """
        t = Timings(time.perf_counter())
        try:
            h = self._host_named(model, version)
        except ServeError as e:
            self.metrics.refused("_unknown")
            return error_reply(e.status, str(e))
        if self.draining:
            self.metrics.failed(h.name, "CANCELED", None, t.arrival)
            return error_reply(503, "shutting down: the server is not accepting new requests")
        if h.state != "READY":
            return error_reply(503, f"model '{h.name}' is not ready ({h.reason})")
        self._inflight += 1
        self._idle.clear()
        try:
            return await self._infer(h, scope, receive, t)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _decode(
        self, h: ModelHost, scope: Scope, receive: Receive
    ) -> tuple[codec.InferRequest, bool]:
        """The request, and whether admission already screened it on its JSON header."""
        limits = self.config.limits
        headers = infer_headers(scope)
        reader = BodyReader(receive, headers.get("content-length"), limits.max_body_bytes)
        hl = headers.get("inference-header-content-length", "")
        screened = False
        if h.admission.screens() and hl.isdigit() and "content-encoding" not in headers:
            await reader.fill(int(hl))  # shed on the header alone when it would be shed anyway
            peek = codec.peek_request(reader.head(int(hl)), len(self.classes))
            if peek is not None:
                cls = class_for_priority(self.classes, peek[0])
                why = h.admission.refuse_early(cls, peek[1], time.perf_counter())
                if why is not None:
                    raise EarlyShed(why, cls)
                screened = True
        body = await reader.body()
        body = codec.decompress(body, headers.get("content-encoding"), limits.max_body_bytes)
        args = (
            body,
            headers.get("inference-header-content-length"),
            h.adapter.inputs,
            limits,
            len(self.classes),
            (codec.OUTPUT,),
            self.config.wire_ids,
            h.keep_int32,
        )
        if len(body) >= self.config.decode_in_thread_bytes:
            return await asyncio.to_thread(codec.decode_request, *args), screened
        return codec.decode_request(*args), screened

    async def _infer(self, h: ModelHost, scope: Scope, receive: Receive, t: Timings) -> Reply:
        try:
            req, screened = await self._decode(h, scope, receive)
        except codec.RequestError as e:
            self.metrics.refused(h.name)
            return error_reply(e.status, str(e))
        except EarlyShed as e:
            self.metrics.accepted(h.name)
            self.metrics.failed(h.name, "REJECTED", t, time.perf_counter())
            self.metrics.shed.labels(h.name, e.cls.name, "shed").inc()
            return error_reply(503, f"overloaded, request shed: {e} (its body was not read)")
        t.decoded = time.perf_counter()
        cls = class_for_priority(self.classes, req.priority)
        self.metrics.accepted(h.name)
        try:
            scores = await h.run(req, cls, t, screened)
            t.computed = time.perf_counter()
            body, headers = codec.encode_response(
                h.name, self.config.version, req.id, req.outputs, scores.numpy()
            )
        except ServeError as e:
            self.metrics.failed(h.name, e.reason, t, time.perf_counter())
            if e.reason == "REJECTED":
                self.metrics.shed.labels(
                    h.name, cls.name, "timeout" if e.status == 504 else "shed"
                ).inc()
            return error_reply(e.status, str(e))
        except Exception as e:  # a bug of ours: still one response, and it says so
            log.exception("infer failed")
            self.metrics.failed(h.name, "OTHER", t, time.perf_counter())
            return error_reply(500, f"internal error: {type(e).__name__}: {e}")
        t.encoded = time.perf_counter()
        self.metrics.succeeded(h.name, cls.name, req.n_items, t)
        return 200, body, headers

    # -- state-changing endpoints (bearer token) ---------------------------------------------
    def _unauthorized(self, request: Request) -> Response | None:
        """None if the request carries the server's bearer token; else the 401/403 to send."""
        if self.token is None:
            return error_response(
                403, "state-changing endpoints are disabled: start the server with RECSCHED_TOKEN "
                "set or with --token-file",
            )  # fmt: skip
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return error_response(
                401, "missing bearer token: send 'Authorization: Bearer <token>'",
                {"www-authenticate": "Bearer"},
            )  # fmt: skip
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return error_response(403, "invalid bearer token")
        return None

    async def repository_index(self, request: Request) -> Response:
        return JSONResponse(
            [
                {"name": n, "version": self.config.version, "state": h.state, "reason": h.reason}
                for n, h in self.hosts.items()
            ]
        )

    async def load(self, request: Request) -> Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        name = request.path_params["model"]
        h = self.hosts.get(name)
        if h is None:
            if self.loader is None:
                return error_response(404, f"unknown model '{name[:100]}' and no model loader")
            try:
                adapter = await asyncio.to_thread(self.loader, name)
            except (ValueError, MemoryError) as e:
                return error_response(400, f"cannot load model '{name[:100]}': {e}")
            try:  # (predicted admission and `configure` may profile the model)
                h = await asyncio.to_thread(
                    ModelHost, name, adapter, self.engine_config, self.classes, self.config
                )
            except ValueError as e:
                return error_response(400, f"cannot serve model '{name[:100]}': {e}")
            self.hosts[name] = h
        if h.state != "READY":
            h.reason = "loading"
            await asyncio.to_thread(h.start)
        return Response(b"", 200)

    async def unload(self, request: Request) -> Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            h = self._host(request)
        except ServeError as e:
            return error_response(e.status, str(e))
        h.state, h.reason = "UNAVAILABLE", "unloading"
        while h.busy():  # accepted requests finish first
            await asyncio.sleep(0.01)
        await asyncio.to_thread(h.close, "unloaded")
        return Response(b"", 200)

    async def recsched_config(self, request: Request) -> Response:
        try:
            h = self._host(request)
        except ServeError as e:
            return error_response(e.status, str(e))
        if request.method == "POST":
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            try:
                cfg = engine_config_from_json(await read_body(request, 1 << 16), h.config)
            except (codec.RequestError, ValueError, TypeError) as e:
                return error_response(getattr(e, "status", 400), f"bad configuration: {e}")
            if h.state != "READY":
                return error_response(503, f"model '{h.name}' is not ready ({h.reason})")
            try:
                old = await asyncio.to_thread(h.swap, cfg)
            except ValueError as e:  # a configuration the engine or `configure` refuses
                return error_response(400, f"bad configuration: {e}")
            if old is not None:
                asyncio.get_running_loop().run_in_executor(None, old.close)
        return JSONResponse(
            {
                "model": h.name,
                "engine": h.config.to_dict(),
                "window": h.admission.window,
                "queue_capacity": self.config.queue_capacity,
                "classes": [
                    {"priority": i + 1, "name": c.name, "value": c.value, "sla_ms": c.sla_ms}
                    for i, c in enumerate(self.classes)
                ],
            }
        )


def engine_config_from_json(body: bytes | bytearray, current: EngineConfig) -> EngineConfig:
    """`{"preset": P, field: value, ...}` over the current configuration (ValueError if bad)."""
    obj = codec.parse_json(body) if body.strip() else {}
    if not isinstance(obj, dict):
        raise ValueError("the body must be a JSON object of EngineConfig fields")
    obj = dict(obj)
    name = obj.pop("preset", None)
    known = set(current.to_dict())
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; fields: {sorted(known)}")
    if name is not None:
        if not isinstance(name, str):
            raise ValueError("'preset' must be a string")
        return preset(name, **obj)
    return current.replace(**obj)


async def read_body(request: Request, limit: int) -> bytearray:
    """The request body, refusing (413) one over `limit` bytes before reading it all."""
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise codec.RequestError(f"body of {announced} bytes exceeds the limit of {limit}", 413)
    body = bytearray()  # mutable: the codec's binary tensors are views of it, not copies
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise codec.RequestError(f"body exceeds the limit of {limit} bytes", 413)
        body += chunk
    return body


# -- running it -----------------------------------------------------------------------------------
class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains: new requests get 503 while in-flight
    ones finish (up to `drain_timeout_s`), then uvicorn shuts down. A second signal forces.
    """

    def __init__(self, config: uvicorn.Config, server: RecschedServer) -> None:
        super().__init__(config)
        self.rs = server

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.rs.draining or self.should_exit:
            self.should_exit = self.force_exit = True
            return
        log.warning("signal %s: draining in-flight requests, refusing new ones", sig)
        self.rs.begin_drain()
        threading.Thread(target=self._exit_when_idle, daemon=True).start()

    def _exit_when_idle(self) -> None:
        self.rs.wait_idle(self.rs.config.drain_timeout_s)
        self.should_exit = True


def make_uvicorn(
    server: RecschedServer, host: str, port: int, log_level: str = "info"
) -> DrainingServer:
    config = uvicorn.Config(
        server.app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,  # no proxy in front; saves a middleware per request
        lifespan="on",
        timeout_graceful_shutdown=server.config.drain_timeout_s,
    )
    return DrainingServer(config, server)


def serve(
    server: RecschedServer, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Run until SIGTERM/SIGINT (blocking, main thread)."""
    make_uvicorn(server, host, port, log_level).run()


class BackgroundServer:
    """Serve on 127.0.0.1 and an ephemeral port from a thread (tests, benchmarks).

    with BackgroundServer(server) as bg:
        client = InferenceServerClient(bg.address)
    """

    def __init__(self, server: RecschedServer, log_level: str = "warning") -> None:
        self.rs = server
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP,
        # and without it every response whose body follows its headers waits ~40 ms.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.uv = make_uvicorn(server, "127.0.0.1", self.port, log_level)
        self.thread = threading.Thread(
            target=self.uv.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        t0 = time.monotonic()
        while not self.uv.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 30:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def drain(self) -> None:
        """What SIGTERM does: drain, then stop."""
        self.uv.handle_exit(15, None)

    def stop(self, timeout: float = 30.0) -> None:
        self.uv.should_exit = True
        self.thread.join(timeout)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.sock.close()
