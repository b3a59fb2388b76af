"""`NNRpcServer`: the host's models behind gRPC, with health, sessions, metrics and a graceful stop.

Every model is shared by all sessions, so the LLM backend's batched scheduler decodes the streams of all
clients in one forward per step; `max_concurrency` sizes its KV slots.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kwasi_runtime.nn.host import NNHost
from kwasi_runtime.nnrpc import wire
from kwasi_runtime.nnrpc.server.http import StatusServer
from kwasi_runtime.nnrpc.server.security import Security, listen, remove_socket
from kwasi_runtime.nnrpc.server.served import METRICS_MODULE
from kwasi_runtime.nnrpc.server.services import NNRpcServices
from kwasi_runtime.nnrpc.server.sessions import Sessions
from kwasi_runtime.serve.metering import Meter, meter_models
from kwasi_runtime.serve.metrics import Metrics, RpcMetrics

log = logging.getLogger(__name__)

MAX_KEEPALIVE_TIMEOUT_S = 10.0  # how long a ping may go unanswered before the connection is dropped
MIN_CLIENT_PING_MS = 10_000  # clients ping every 30 s (gRPC's default floor, 5 min, would reject that)
_REAP_EVERY_S = 5.0


@dataclass(frozen=True)
class ServerConfig:
    uri: str
    max_concurrency: int = 16  # generations at once per model: its KV slots
    max_sessions: int = 64
    idle_session_s: float = 600.0  # sessions of WasmEdge clients (no id) end after this long without a call
    call_timeout_s: float = 300.0  # no wait inside the server outlasts this, whatever the call's deadline
    max_message_bytes: int = 64 << 20
    keepalive_s: float = 30.0  # ping quiet clients this often: one that cannot answer (frozen, cut off) is dropped
    grace_s: float = 10.0
    metrics_address: str | None = None
    security: Security = field(default_factory=Security)


class NNRpcServer:
    def __init__(self, config: ServerConfig, host: NNHost, metrics: Metrics | None = None) -> None:
        config.security.validate(config.uri)
        self.config = config
        self.metrics = metrics or Metrics()
        self.rpc_metrics = RpcMetrics(self.metrics.registry)
        self.meter = meter = Meter(self.metrics)
        self.models = meter_models(host.models, meter)
        for name in self.models.names():
            model = self.models.get(name)
            assert model is not None
            model.set_stream_slots(config.max_concurrency)
            self.metrics.kv_usage_sources[name] = model.kv_cache_usage
            self.metrics.declare_model(name)
            self.metrics.declare(name, METRICS_MODULE)
        self.sessions = Sessions(config.max_sessions, config.idle_session_s, self.rpc_metrics.sessions.set)
        self.services = NNRpcServices(self.models, host.backends, host.options.tensor_types, self.sessions,
                                      self.rpc_metrics, config.call_timeout_s)
        self.health = health.HealthServicer()
        self.ready = False
        self.port = 0
        self._stopped = threading.Event()
        self._server: grpc.Server | None = None
        self._status: StatusServer | None = None

    def prepare(self) -> None:
        """Loads every model's weights now (backends may do it lazily), so no client pays for it."""
        self.meter.load_models(self.models, self.models.names())
        self.ready = True
        for service in ("", *wire.WASMEDGE_SERVICES, *wire.KWASI_SERVICES):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def start(self) -> int:
        """Listens (health answers NOT_SERVING until `prepare` is done); returns the TCP port (0: unix socket)."""
        c = self.config
        workers = 2 * c.max_sessions + 16  # a session's Open call and a Generate stream each hold a thread
        ping_timeout_ms = int(min(c.keepalive_s, MAX_KEEPALIVE_TIMEOUT_S) * 1000)
        options = [
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.keepalive_time_ms", int(c.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", ping_timeout_ms),
            ("grpc.http2.ping_timeout_ms", ping_timeout_ms),  # what gRPC 1.85 waits for a ping's ack (default 60 s)
            ("grpc.http2.max_pings_without_data", 0),  # a session's Open call sends no data, and must be pinged
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
        ]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nnrpc"),
                             handlers=self.services.handlers(), interceptors=c.security.interceptors(),
                             options=options, maximum_concurrent_rpcs=workers)
        for service in ("", *wire.WASMEDGE_SERVICES, *wire.KWASI_SERVICES):
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = listen(server, c.uri, c.security)
        server.start()
        self._server = server
        threading.Thread(target=self._reap, name="nnrpc-reaper", daemon=True).start()
        if c.metrics_address:
            self._status = StatusServer(c.metrics_address, self.metrics.exposition, self.not_ready)
            self._status.start()
        return self.port

    @property
    def metrics_port(self) -> int:
        return self._status.port if self._status else 0

    def not_ready(self) -> str | None:
        if self._stopped.is_set():
            return "stopping"
        return None if self.ready else "loading models"

    def _reap(self) -> None:
        while not self._stopped.wait(_REAP_EVERY_S):
            self.sessions.reap_idle()

    def stop(self, grace_s: float | None = None) -> None:
        """Health goes NOT_SERVING, running calls get `grace_s` to end, then every session is freed."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if self._server is not None:
            self._server.stop(self.config.grace_s if grace_s is None else grace_s).wait()
        self.sessions.end_all()
        if self._status is not None:
            self._status.stop()
        remove_socket(self.config.uri)

    def serve_until_signal(self) -> int:
        """The CLI's loop: listen, load models, serve until SIGTERM/SIGINT, stop gracefully."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        try:
            port = self.start()
        except (ValueError, RuntimeError) as e:  # a taken address or socket path
            log.error("cannot listen on %s: %s", self.config.uri, e)
            return 2
        log.warning("nn-rpc-server listening on %s%s", self.config.uri, f" (port {port})" if port else "")
        try:
            self.prepare()
        except Exception as e:
            log.error("start-up failed: %s", e)
            self.stop(0)
            return 1
        log.warning("ready: models %s", self.models.names() or "none (clients may only load from bytes)")
        while not stop.wait(1.0):
            pass
        log.warning("stopping: %d sessions, up to %gs for running calls", len(self.sessions), self.config.grace_s)
        self.stop()
        return 0
