"""`kwasi-runtime serve`: one asyncio process; every request runs a guest in a fresh sandbox on a worker thread.

Routes: `/healthz`, `/readyz`, `/metrics` and everything under `/v1/` are the server's own; any other path goes
to the `--module` guest (WAGI). `/v1/chat/completions` and `/v1/completions` run the default chat guest.

Flow of a guest request: body read (413 past the limit) → admission (queue past --max-concurrency, 429 past
--max-queue) → `Sandbox.instance` on a worker thread (wasm releases the GIL) with the request as WAGI
environment and the body as stdin → the guest's stdout comes back through a bounded pipe, its CGI prelude
picks status and headers, and the rest streams to the client chunk by chunk. A client that goes away sets
the run's cancel event: its next WASI-NN call traps and the host frees its contexts (KV slot) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from kwasi_runtime.engine import EngineSettings
from kwasi_runtime.sandbox import Limits, Preopen, RunResult, Sandbox, WasiSetup
from kwasi_runtime.serve import metering, openai
from kwasi_runtime.serve.metering import Meter, RequestRecord, meter_models
from kwasi_runtime.serve.metrics import FINISH_REASONS, Metrics
from kwasi_runtime.serve.wagi import Head, PreludeParser, RequestInfo, request_env
from kwasi_runtime.wasi_nn import NNHost

log = logging.getLogger(__name__)

RESERVED = ("/healthz", "/readyz", "/metrics")
OPENAI_PREFIX = "/v1/"
PIPE_LIMIT_BYTES = 1 << 20  # guest output buffered ahead of a slow client before the guest blocks
STDERR_LIMIT_BYTES = 64 << 10
FINISH_PREFIX = b"kwasi-finish-reason: "
CLIENT_CLOSED = 499  # nginx's code for "client closed the request", used in metrics only


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    module: Path | None = None
    chat_module: Path | None = None
    max_concurrency: int = 4
    max_queue: int = 64
    timeout_s: float | None = 300.0
    max_body_bytes: int = 4 << 20
    grace_s: float = 30.0
    memory_bytes: int = 1 << 30
    fuel: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    dirs: tuple[Preopen, ...] = ()
    cache_dir: Path | None = None


def default_chat_module() -> Path | None:
    """$KWASI_CHAT_GUEST, a copy shipped inside the package, or the repository's build output."""
    candidates: list[str | Path] = [
        os.environ.get("KWASI_CHAT_GUEST", ""),
        Path(__file__).with_name("openai_chat.wasm"),
        Path(__file__).resolve().parents[3] / "build" / "guests" / "openai_chat.wasm",
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


class QueueFull(Exception):
    pass


class Admission:
    """At most `slots` guests run; up to `queue` more wait in arrival order; the rest are refused."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = slots
        self.queue = queue
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.slots and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.queue:
            raise QueueFull
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut in self._waiters:
                self._waiters.remove(fut)
            elif fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as the client left
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self.running -= 1


class OutputPipe:
    """Guest stdout (a worker thread) → the request's task, bounded in bytes: a guest that outruns its
    client blocks in its write until the client catches up, instead of growing the server's memory."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = PIPE_LIMIT_BYTES) -> None:
        self._loop = loop
        self._limit = limit
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._buffered = 0
        self._cond = threading.Condition()
        self._reader_gone = False

    def write(self, data: bytes) -> None:  # guest thread (WASI stdout_custom)
        with self._cond:
            while self._buffered > self._limit and not self._reader_gone:
                self._cond.wait(0.1)
            if self._reader_gone:
                return
            self._buffered += len(data)
        self._post(bytes(data))

    def finish(self) -> None:  # guest thread, once the run is over
        self._post(None)

    def _post(self, item: bytes | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed at process exit
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def read(self) -> bytes | None:
        data = await self._queue.get()
        if data:
            with self._cond:
                self._buffered -= len(data)
                self._cond.notify_all()
        return data

    def close_reader(self) -> None:
        with self._cond:
            self._reader_gone = True
            self._cond.notify_all()


class StderrTail:
    """The guest's stderr, kept for logs and the finish-reason line; bounded."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        if len(self.data) < STDERR_LIMIT_BYTES:
            self.data += data[: STDERR_LIMIT_BYTES - len(self.data)]

    def finish_reason(self) -> str | None:
        for line in self.data.splitlines():
            if line.startswith(FINISH_PREFIX):
                reason = line[len(FINISH_PREFIX):].strip().decode("ascii", "replace")
                return reason if reason in FINISH_REASONS else None
        return None


@dataclass
class Guest:
    name: str  # the `module` label
    path: Path
    sandbox: Sandbox | None = None


@dataclass(eq=False)  # identity: jobs live in a set
class Job:
    record: RequestRecord
    pipe: OutputPipe
    done: asyncio.Future[RunResult]
    cancel: threading.Event = field(default_factory=threading.Event)
    stderr: StderrTail = field(default_factory=StderrTail)
    # The request ends when both its handler and its guest are through; metrics are recorded then.
    status: int = 0
    finish_reason: str | None = None
    parts_left: int = 2


class Server:
    def __init__(self, config: ServeConfig, host: NNHost, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.meter = Meter(self.metrics)
        host.models = meter_models(host.models, self.meter)
        self.host = host
        self.model_names = host.models.names()
        self.app_guest = Guest(config.module.stem, config.module) if config.module else None
        chat = config.chat_module or default_chat_module()
        self.chat_guest = Guest(chat.stem, chat) if chat else None
        self.admission = Admission(config.max_concurrency, config.max_queue)
        self.executor = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="kwasi-guest")
        self.ready = False
        self.not_ready_reason = "loading models and compiling modules"
        self.draining = False
        self.jobs: set[Job] = set()
        self.inflight = 0
        self._idle = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = config.port
        for name in self.model_names:
            self._size_stream_slots(name)
            self.metrics.kv_usage_sources[name] = self._kv_usage(name)

    def _size_stream_slots(self, name: str) -> None:
        """Backends with fixed per-stream KV slots (the LLM engine) get one per guest that may run at once."""
        inner = getattr(self.host.models.get(name), "inner", None)
        configure = getattr(inner, "set_stream_slots", None)
        if callable(configure):
            configure(self.config.max_concurrency)

    def _kv_usage(self, name: str) -> Callable[[], float]:
        model = self.host.models.get(name)
        inner = getattr(model, "inner", None)
        engine_figure = getattr(inner, "kv_cache_usage", None)
        if callable(engine_figure):
            return lambda: float(engine_figure())
        # Without an engine figure: one KV slot per running stream, --max-concurrency slots.
        return lambda: self.meter.streams(name) / self.config.max_concurrency

    # --- start-up ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Compiles the modules and loads every model (blocking); /readyz answers 200 afterwards."""
        settings = EngineSettings(fuel=self.config.fuel is not None)
        for guest in (self.app_guest, self.chat_guest):
            if guest is not None:
                guest.sandbox = Sandbox(guest.path, self.host, settings=settings, cache_dir=self.config.cache_dir)
        for name in self.model_names:
            model = self.host.models.get(name)
            assert model is not None
            started = time.monotonic()
            # Backends may load weights lazily (GGML semantics); a graph forces it now, not on the first request.
            model.graph(None).close()
            self.metrics.model_load.labels(model=name).set(time.monotonic() - started)
        self.ready = True
        log.info("ready: models %s, module %s, chat guest %s", self.model_names,
                 self.app_guest.path if self.app_guest else None, self.chat_guest.path if self.chat_guest else None)

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def start(self) -> int:
        """Listens (ready or not: /healthz must answer while models load); returns the bound port."""
        self._loop = asyncio.get_running_loop()
        # handler_cancellation: a client that disconnects cancels its handler, which cancels its guest.
        self._runner = web.AppRunner(self.make_app(), handler_cancellation=True, access_log=None,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        return self.port

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stops accepting, lets running streams finish for up to the grace period, cancels the rest."""
        grace = self.config.grace_s if grace_s is None else grace_s
        self.draining = True
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), grace)
        for job in list(self.jobs):
            job.cancel.set()
            job.pipe.close_reader()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), 5.0)
        if self._runner is not None:
            await self._runner.cleanup()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _drained(self) -> None:
        while self.inflight or self.jobs:
            self._idle.clear()
            await self._idle.wait()

    # --- routing -------------------------------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/healthz":
            return web.Response(text="ok\n")
        if path == "/readyz":
            if self.draining:
                return web.Response(status=503, text="draining\n")
            return web.Response(text="ready\n") if self.ready else web.Response(
                status=503, text=f"not ready: {self.not_ready_reason}\n")
        if path == "/metrics":
            return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
        if path.startswith(OPENAI_PREFIX) or path == OPENAI_PREFIX.rstrip("/"):
            return await self._tracked(self._openai, request)
        if self.app_guest is None:
            return web.Response(status=404, text="no --module is configured for this path\n")
        return await self._tracked(self._wagi, request)

    async def _tracked(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                       request: web.Request) -> web.StreamResponse:
        if self.draining:
            return web.Response(status=503, text="shutting down\n", headers={"Connection": "close"})
        self.inflight += 1
        try:
            return await handler(request)
        finally:
            self.inflight -= 1
            self._idle.set()

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        arrival = time.monotonic()
        route = request.path.rstrip("/")
        if route == "/v1/models" and request.method == "GET":
            return web.json_response(openai.models_list(self.model_names, int(time.time())))
        plans = {"/v1/chat/completions": openai.chat_plan, "/v1/completions": openai.completion_plan}
        make_plan = plans.get(route)
        if make_plan is None:
            return _openai_error(404, f"Unknown route {request.method} {request.path}.")
        if request.method != "POST":
            return _openai_error(405, f"{route} accepts POST only.")
        guest = self.chat_guest
        record = RequestRecord(arrival, guest.name if guest else "")
        if guest is None or not self.ready or guest.sandbox is None:
            why = "no chat guest is configured" if guest is None else f"not ready: {self.not_ready_reason}"
            return self._refuse(record, _openai_error(503, why, type="server_error"))
        body = await self._body(request, record, openai_errors=True)
        if isinstance(body, web.StreamResponse):
            return body
        try:
            plan = make_plan(body, self.model_names)
        except openai.OpenAIError as e:
            return self._refuse(record, _openai_error(e.status, e.message, param=e.param, code=e.code))
        record.model = plan.model
        return await self._run(request, guest, record, [*self._base_env(request, len(body)), *plan.env],
                               plan.stdin, "openai")

    async def _wagi(self, request: web.Request) -> web.StreamResponse:
        guest = self.app_guest
        assert guest is not None
        record = RequestRecord(time.monotonic(), guest.name)
        if not self.ready or guest.sandbox is None:
            return self._refuse(record, web.Response(status=503, text=f"not ready: {self.not_ready_reason}\n"))
        body = await self._body(request, record, openai_errors=False)
        if isinstance(body, web.StreamResponse):
            return body
        return await self._run(request, guest, record, self._base_env(request, len(body)), body, "wagi")

    def _base_env(self, request: web.Request, body_len: int) -> list[tuple[str, str]]:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        info = RequestInfo(
            method=request.method, path=request.path, raw_path=request.raw_path.split("?", 1)[0],
            query=request.query_string, headers=list(request.headers.items()),
            remote=str(peer[0]) if peer else "", server_name=request.url.host or "localhost",
            server_port=request.url.port or self.port,
        )
        return [*self.config.env, *request_env(info, body_len)]

    async def _body(self, request: web.Request, record: RequestRecord, openai_errors: bool) -> bytes | web.Response:
        limit = self.config.max_body_bytes
        too_large = f"request body exceeds {limit} bytes"
        if request.content_length is not None and request.content_length > limit:
            return self._refuse(record, _openai_error(413, too_large) if openai_errors
                                else web.Response(status=413, text=too_large + "\n"))
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(record, _openai_error(413, too_large) if openai_errors
                                else web.Response(status=413, text=too_large + "\n"))

    def _refuse(self, record: RequestRecord, response: web.Response) -> web.Response:
        """A request answered without running a guest still counts in the request metrics."""
        reason = "abort" if response.status == 429 else "error"
        self._observe_end(record, response.status, reason)
        return response

    # --- running a guest -------------------------------------------------------------------------------
    async def _run(self, request: web.Request, guest: Guest, record: RequestRecord, env: list[tuple[str, str]],
                   stdin: bytes, flavour: Literal["wagi", "openai"]) -> web.StreamResponse:
        labels = {"model": record.model, "module": record.module}
        waiting = self.metrics.requests_waiting.labels(**labels)
        waiting.inc()
        try:
            await self.admission.acquire()
        except QueueFull:
            msg = f"server busy: {self.admission.running} running, {self.admission.waiting} queued"
            return self._refuse(record, _openai_error(429, msg, type="server_error") if flavour == "openai"
                                else web.Response(status=429, text=msg + "\n"))
        except asyncio.CancelledError:
            self._observe_end(record, CLIENT_CLOSED, "abort")
            raise
        finally:
            waiting.dec()
        record.admitted = time.monotonic()
        loop = asyncio.get_running_loop()
        job = Job(record, OutputPipe(loop), loop.create_future())
        self.jobs.add(job)
        self.metrics.requests_running.labels(**labels).inc()
        assert guest.sandbox is not None
        self.executor.submit(self._guest_thread, guest.sandbox, job, env, stdin, loop)
        response: web.StreamResponse | None = None
        try:
            response = await self._stream(request, job, flavour)
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            # The client went away: stop the guest at its next WASI-NN call (frees its KV slot).
            # A client that leaves right after the last event (e.g. `[DONE]`) races the guest's exit; only a
            # guest that was actually interrupted makes the request an abort (see _part_done).
            job.cancel.set()
            job.pipe.close_reader()
            raise
        finally:
            self._part_done(job)

    def _guest_thread(self, sandbox: Sandbox, job: Job, env: list[tuple[str, str]], stdin: bytes,
                      loop: asyncio.AbstractEventLoop) -> None:
        stdin_path: Path | None = None
        result = RunResult(exit_code=None, trap="the guest did not run")
        metering.bind(job.record)
        try:
            if stdin:
                fd, name = tempfile.mkstemp(prefix="kwasi-body-")
                with os.fdopen(fd, "wb") as f:
                    f.write(stdin)
                stdin_path = Path(name)
            setup = WasiSetup(args=[job.record.module], env=env, dirs=self.config.dirs,
                              stdin=stdin_path or "empty", stdout=job.pipe.write, stderr=job.stderr.write)
            limits = Limits(timeout_s=self.config.timeout_s, memory_bytes=self.config.memory_bytes,
                            fuel=self.config.fuel)
            result = run_guest(sandbox, setup, limits, job.cancel, job.record)
        except Exception as e:  # a host bug must still end the request
            log.exception("guest run failed in the host")
            result = RunResult(exit_code=None, trap=f"host error: {e}")
        finally:
            metering.bind(None)
            if stdin_path is not None:
                stdin_path.unlink(missing_ok=True)
            job.pipe.finish()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._guest_done, job, result)

    def _guest_done(self, job: Job, result: RunResult) -> None:
        if not job.done.done():
            job.done.set_result(result)
        self.admission.release()
        self.metrics.requests_running.labels(model=job.record.model, module=job.record.module).dec()
        if result.trap is not None and not result.cancelled:
            reason = result.trap_code.name.lower() if result.trap_code is not None else "error"
            self.metrics.guest_traps.labels(model=job.record.model, module=job.record.module, reason=reason).inc()
        if job.stderr.data:
            log.debug("guest %s stderr: %s", job.record.module, job.stderr.data.decode("utf-8", "replace"))
        self._part_done(job)

    async def _stream(self, request: web.Request, job: Job, flavour: str) -> web.StreamResponse:
        parser = PreludeParser()
        decided: tuple[Head, bytes] | None = None
        while decided is None:
            chunk = await job.pipe.read()
            if chunk is None:
                # The guest ended before its output decided anything: its result decides.
                head, body = parser.finish()
                result = await asyncio.shield(job.done)
                failure = _failure(result, bool(body) or head.status != 200, flavour)
                if failure is not None:
                    job.status = failure.status
                    job.finish_reason = "error"
                    return failure
                return self._whole(job, head, body)
            decided = parser.feed(chunk)
        head, body = decided
        response = web.StreamResponse(status=head.status, headers=head.headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        job.status = head.status
        if body:
            await response.write(body)
        while (chunk := await job.pipe.read()) is not None:
            await response.write(chunk)
        result = await asyncio.shield(job.done)
        # A guest that answered with an error status and exited non-zero has said what happened itself.
        if result.exit_code is None or (result.exit_code != 0 and head.status < 400):
            job.finish_reason = "error"
            if "text/event-stream" in response.headers.get("Content-Type", "") and result.trap:
                await response.write(b"data: " + openai.error_body(f"the guest failed: {result.trap}",
                                                                   "server_error") + b"\n\n")
            elif request.transport is not None:
                # Headers are out: an incomplete chunked body is how HTTP says the response failed.
                request.transport.abort()
                return response
        await response.write_eof()
        return response

    def _whole(self, job: Job, head: Head, body: bytes) -> web.Response:
        job.status = head.status
        return web.Response(status=head.status, headers=head.headers, body=body)

    def _part_done(self, job: Job) -> None:
        job.parts_left -= 1
        if job.parts_left:
            return
        self.jobs.discard(job)
        self._idle.set()
        result = job.done.result() if job.done.done() else None
        reason: str | None
        if result is not None and result.cancelled:
            status, reason = CLIENT_CLOSED, "abort"
        else:
            status = job.status or 500
            reason = job.finish_reason or job.stderr.finish_reason()
            if reason is None:
                reason = "error" if status >= 500 or (result is not None and _failed(result)) else "stop"
        self._observe_end(job.record, status, reason)

    def _observe_end(self, record: RequestRecord, status: int, finish_reason: str) -> None:
        m = self.metrics
        labels = {"model": record.model, "module": record.module}
        now = time.monotonic()
        m.e2e_latency.labels(**labels).observe(now - record.arrival)
        m.requests.labels(**labels, status=str(status), finish_reason=finish_reason).inc()
        if record.admitted is not None:
            m.queue_time.labels(**labels).observe(record.admitted - record.arrival)
        if record.instantiate_s is not None:
            m.instantiate_time.labels(**labels).observe(record.instantiate_s)
        if record.tokens >= 2 and record.first_token is not None and record.last_token is not None:
            m.time_per_output_token.labels(**labels).observe(
                (record.last_token - record.first_token) / (record.tokens - 1))
            m.max_stall.labels(**labels).observe(record.max_stall_s)

    # --- process lifecycle ---------------------------------------------------------------------------
    async def serve_until_signal(self) -> int:
        """The CLI's main loop: listen, load in the background, drain on SIGTERM/SIGINT, exit 0."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        port = await self.start()
        log.warning("listening on %s:%d", self.config.host, port)
        code = 0
        loading: asyncio.Future[None] = loop.run_in_executor(None, self.prepare)
        stopped: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
        await asyncio.wait([loading, stopped], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if loading.done() and loading.exception() is not None:
            self.not_ready_reason = f"start-up failed: {loading.exception()}"
            log.error("%s", self.not_ready_reason)
            code = 1
        else:
            await stopped
            log.warning("stopping: draining %d requests for up to %gs", self.inflight, self.config.grace_s)
        await self.shutdown()
        stopped.cancel()
        return code


def run_guest(sandbox: Sandbox, wasi: WasiSetup, limits: Limits, cancel: threading.Event,
              record: RequestRecord) -> RunResult:
    """`Sandbox.run`, keeping its instantiation time for the per-request sandbox-cost metric."""
    result = sandbox.run(wasi, limits, cancel=cancel)
    record.instantiate_s = result.instantiate_s
    return result


def _failed(result: RunResult) -> bool:
    return result.exit_code != 0


def _failure(result: RunResult, has_output: bool, flavour: str) -> web.Response | None:
    """The error response for a guest that ended before starting one; None when its output stands."""
    if result.exit_code == 0 or (result.exit_code is not None and has_output):
        return None  # a guest that wrote a response and exited non-zero chose its status itself
    if result.timed_out:
        status, message = 504, f"the guest exceeded its deadline: {result.trap}"
    elif result.trap is not None:
        status, message = 500, f"the guest trapped: {result.trap}"
    else:
        status, message = 500, f"the guest exited with code {result.exit_code} before writing a response"
    if flavour == "openai":
        return _openai_error(status, message, type="server_error")
    return web.Response(status=status, text=message + "\n")


def _openai_error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                  code: str | None = None) -> web.Response:
    return web.Response(status=status, body=openai.error_body(message, type, param, code),
                        content_type="application/json")
