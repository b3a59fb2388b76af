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
import hmac
import importlib.metadata
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.sandbox import Sandbox
from kwasi_runtime.serve import openai
from kwasi_runtime.serve.config import ServeConfig
from kwasi_runtime.serve.metering import Meter, RequestRecord, meter_models
from kwasi_runtime.serve.metrics import Metrics
from kwasi_runtime.serve.responses import Flavour, error_response
from kwasi_runtime.serve.runner import Guest, GuestRunner
from kwasi_runtime.serve.vllm_metrics import vllm_registry
from kwasi_runtime.serve.wagi import RequestInfo, request_env
from kwasi_runtime.wasm.engine import EngineSettings

log = logging.getLogger(__name__)


RESERVED = ("/healthz", "/readyz", "/metrics")
OPEN = frozenset(RESERVED)  # answered without the API key (probes and scrapers)
OPENAI_PREFIX = "/v1/"
# vLLM's utility routes, served by the chat guest like the /v1 ones (a --module guest no longer sees them).
UTILITY = ("/tokenize", "/detokenize", "/version")
PLANS: dict[str, openai.Planner] = {
    "/v1/chat/completions": openai.chat_plan, "/v1/completions": openai.completion_plan,
    "/v1/embeddings": openai.embedding_plan, "/tokenize": openai.tokenize_plan,
    "/detokenize": openai.detokenize_plan,
}
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
VERSION = importlib.metadata.version("kwasi-runtime")
REQUEST_ID_KEY = web.RequestKey("request_id", str)


class _QuietBadRequests(logging.Filter):
    """A malformed request (a 64 KB header, a bad request line) is the client's error: aiohttp answers 400;
    it is logged at DEBUG without a traceback instead of as a server ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("bad request: %s", exc)
            return False
        return True


http_log = logging.getLogger("kwasi_runtime.serve.http")
http_log.addFilter(_QuietBadRequests())

def default_chat_module() -> Path | None:
    """$KWASI_CHAT_GUEST, a copy shipped inside the package, or the repository's build output."""
    candidates: list[str | Path] = [
        os.environ.get("KWASI_CHAT_GUEST", ""),
        Path(__file__).with_name("openai_chat.wasm"),
        Path(__file__).resolve().parents[3] / "build" / "guests" / "openai_chat.wasm",
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)

class Server:
    def __init__(self, config: ServeConfig, host: NNHost, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.meter = Meter(self.metrics)
        self.host = host.with_models(meter_models(host.models, self.meter))
        self.model_names = host.models.names()
        self.app_guest = Guest(config.module.stem, config.module) if config.module else None
        chat = config.chat_module or default_chat_module()
        self.chat_guest = Guest(chat.stem, chat) if chat else None
        self.runner = GuestRunner(config, self.meter)
        self.ready = False
        self.not_ready_reason = "loading models and compiling modules"
        self.draining = False
        self.inflight = 0
        self._idle = self.runner.idle
        self._runner: web.AppRunner | None = None
        self.port = config.port
        for name in self.model_names:
            model = self.host.models.get(name)
            assert model is not None
            # Backends with fixed per-stream KV slots get one per guest that may run at once.
            model.set_stream_slots(config.max_concurrency)
            self.metrics.kv_usage_sources[name] = model.kv_cache_usage
            self.metrics.declare_model(name)
            if self.chat_guest is not None:
                self.metrics.declare(name, self.chat_guest.name)
        # What requests are labelled with before a model is known: refusals, and WAGI guests until they load one.
        for guest in (self.chat_guest, self.app_guest):
            if guest is not None:
                self.metrics.declare("", guest.name)
        self.vllm = vllm_registry(self.metrics, self.model_names) if config.vllm_metrics else None

    # --- start-up ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Compiles the modules and loads every model (blocking); /readyz answers 200 afterwards."""
        settings = EngineSettings(fuel=self.config.fuel is not None)
        for guest in (self.app_guest, self.chat_guest):
            if guest is not None:
                guest.sandbox = Sandbox(guest.path, self.host, settings=settings, cache_dir=self.config.cache_dir)
                # What would fail every request (an import the host lacks, a trap in the module's start
                # function, a memory over the limit) stops the server now, with the reason.
                guest.sandbox.check_instantiates()
        self.meter.load_models(self.host.models, self.model_names)  # now, not on the first request
        self.ready = True
        log.info("ready: models %s, module %s, chat guest %s", self.model_names,
                 self.app_guest.path if self.app_guest else None, self.chat_guest.path if self.chat_guest else None)

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        app.on_response_prepare.append(self._stamp)
        return app

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Request-Id"] = request.get(REQUEST_ID_KEY, "")

    async def start(self) -> int:
        """Listens (ready or not: /healthz must answer while models load); returns the bound port."""
        self._loop = asyncio.get_running_loop()
        # handler_cancellation: a client that disconnects cancels its handler, which cancels its guest.
        self._runner = web.AppRunner(self.make_app(), handler_cancellation=True, access_log=None,
                                     shutdown_timeout=1.0, logger=http_log)
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
        self.runner.cancel_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), 5.0)
        if self._runner is not None:
            await self._runner.cleanup()
        self.runner.close()

    async def _drained(self) -> None:
        while self.inflight or self.runner.jobs:
            self._idle.clear()
            await self._idle.wait()

    # --- routing -------------------------------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        given = request.headers.get("X-Request-Id", "")
        request[REQUEST_ID_KEY] = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        started = time.monotonic()
        try:
            response = await self._route(request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:  # a bug must still answer in the route's own shape, and be logged with the request id
            log.exception("request %s: %s %s failed in the server", request[REQUEST_ID_KEY], request.method,
                          request.path)
            flavour: Flavour = "openai" if self._is_openai(request.path) else "wagi"
            response = error_response(flavour, 500, "internal server error")
        log.info("request %s: %s %s -> %d in %.3f s", request[REQUEST_ID_KEY], request.method, request.path,
                 response.status, time.monotonic() - started)
        return response

    @staticmethod
    def _is_openai(path: str) -> bool:
        return path.startswith(OPENAI_PREFIX) or path == OPENAI_PREFIX.rstrip("/") or path in UTILITY

    def _authorized(self, request: web.Request) -> bool:
        key = self.config.api_key
        if not key or request.path in OPEN:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {key}".encode())

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if not self._authorized(request):
            flavour: Flavour = "openai" if self._is_openai(path) else "wagi"
            return error_response(flavour, 401, "Incorrect API key provided. Pass it as 'Authorization: Bearer "
                                  "<key>'.", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if path == "/healthz":
            return web.Response(text="ok\n")
        if path == "/readyz":
            if self.draining:
                return web.Response(status=503, text="draining\n")
            return web.Response(text="ready\n") if self.ready else web.Response(
                status=503, text=f"not ready: {self.not_ready_reason}\n")
        if path == "/metrics":
            body = self.metrics.exposition() + (generate_latest(self.vllm) if self.vllm is not None else b"")
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
        if self._is_openai(path):
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
        if route in ("/v1/models", "/version") or route.startswith("/v1/models/"):
            if request.method != "GET":
                return error_response("openai", 405, f"{route} accepts GET only.")
            if route == "/version":
                return web.json_response({"version": VERSION})
            created = int(time.time())
            if route == "/v1/models":
                return web.json_response(openai.models_list(self.model_names, created))
            name = route.removeprefix("/v1/models/")
            if name not in self.model_names:
                return error_response("openai", 404, f"The model `{name}` does not exist.", param="model",
                                      code="model_not_found")
            return web.json_response(openai.model_card(name, created))
        make_plan = PLANS.get(route)
        if make_plan is None:
            return error_response("openai", 404, f"Unknown route {request.method} {request.path}.")
        if request.method != "POST":
            return error_response("openai", 405, f"{route} accepts POST only.")
        guest = self.chat_guest
        record = RequestRecord(arrival, guest.name if guest else "")
        if guest is None or not self.ready or guest.sandbox is None:
            why = "no chat guest is configured" if guest is None else f"not ready: {self.not_ready_reason}"
            return self._refuse(record, error_response("openai", 503, why))
        body = await self._body(request, record, "openai")
        if isinstance(body, web.StreamResponse):
            return body
        try:
            plan = make_plan(body, self.model_names, self._context_length)
        except openai.OpenAIError as e:
            return self._refuse(record, error_response("openai", e.status, e.message, param=e.param, code=e.code))
        record.model = plan.model
        return await self.runner.run(request, guest, record, [*self._base_env(request, len(body)), *plan.env],
                               plan.stdin, "openai")

    async def _wagi(self, request: web.Request) -> web.StreamResponse:
        guest = self.app_guest
        assert guest is not None
        record = RequestRecord(time.monotonic(), guest.name)
        if not self.ready or guest.sandbox is None:
            return self._refuse(record, error_response("wagi", 503, f"not ready: {self.not_ready_reason}"))
        body = await self._body(request, record, "wagi")
        if isinstance(body, web.StreamResponse):
            return body
        return await self.runner.run(request, guest, record, self._base_env(request, len(body)), body, "wagi")

    def _context_length(self, name: str) -> int | None:
        model = self.host.models.get(name)
        return model.context_length() if model is not None else None

    def _base_env(self, request: web.Request, body_len: int) -> list[tuple[str, str]]:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        info = RequestInfo(
            method=request.method, path=request.path, raw_path=request.raw_path.split("?", 1)[0],
            query=request.query_string, headers=list(request.headers.items()),
            remote=str(peer[0]) if peer else "", server_name=request.url.host or "localhost",
            server_port=request.url.port or self.port,
        )
        return [*self.config.env, *request_env(info, body_len)]

    async def _body(self, request: web.Request, record: RequestRecord, flavour: Flavour) -> bytes | web.Response:
        limit = self.config.max_body_bytes
        too_large = f"request body exceeds {limit} bytes"
        if request.content_length is not None and request.content_length > limit:
            return self._refuse(record, error_response(flavour, 413, too_large))
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(record, error_response(flavour, 413, too_large))

    def _refuse(self, record: RequestRecord, response: web.Response) -> web.Response:
        return self.runner.refuse(record, response)

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
            log.error("%s; exiting in %gs", self.not_ready_reason, self.config.failure_linger_s)
            code = 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopped), self.config.failure_linger_s)
        else:
            await stopped
            log.warning("stopping: draining %d requests for up to %gs", self.inflight, self.config.grace_s)
        await self.shutdown()
        stopped.cancel()
        return code

