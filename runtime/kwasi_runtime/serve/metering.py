"""Token timing at the WASI-NN boundary: named models wrapped so every request's guest reports its tokens.

The wrapper sits between the host and the backend, so it sees exactly what the sandboxed guest asks for:
one `compute_single` per generated token. It finds the request it belongs to through a thread-local that
the server binds around each guest run (a Store runs on one thread, as the host's own state does).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kwasi_runtime.nn.abi import Errno, NNError
from kwasi_runtime.nn.backend_api import ExecutionContext, Graph, ModelWrapper, NamedModel, Tensor
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.serve.metrics import Metrics

METADATA_INDEX = 1  # WasmEdge GGML: get_output(1) is {"input_tokens", "output_tokens", ...}


@dataclass
class RequestRecord:
    """What one request saw; written by its guest thread, read by the server when the request ends."""

    arrival: float
    module: str
    model: str = ""
    admitted: float | None = None
    instantiate_s: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    max_stall_s: float = 0.0
    finish_reason: str | None = None  # what the guest reported, if it did
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_current = threading.local()


def bind(record: RequestRecord | None) -> None:
    """Makes `record` the request of guest runs on this thread (None unbinds)."""
    _current.record = record


def current() -> RequestRecord | None:
    record: RequestRecord | None = getattr(_current, "record", None)
    return record


class Meter:
    """Turns token events into histogram observations as they happen (TTFT must not wait for the end)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def generation_ended(self, model: str, prompt_tokens: int, generated: int) -> None:
        record = current()
        labels = {"model": model, "module": record.module if record else ""}
        m = self.metrics
        m.prompt_tokens.labels(**labels).inc(prompt_tokens)
        m.generation_tokens.labels(**labels).inc(generated)
        m.prompt_length.labels(**labels).observe(prompt_tokens)
        m.generation_length.labels(**labels).observe(generated)

    def request_ended(self, record: RequestRecord, status: int, finish_reason: str) -> None:
        """Everything observed once per request, when both its handler and its guest are through."""
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

    def load_models(self, models: NamedModels, names: Iterable[str]) -> None:
        """Loads each named model's weights now, timed (backends may load lazily, GGML semantics: a graph forces
        it); a failure is counted, then raised."""
        for name in names:
            model = models.get(name)
            assert model is not None
            started = time.monotonic()
            try:
                model.graph(None).close()
            except Exception:
                self.metrics.model_load_failures.labels(model=name).inc()
                raise
            self.metrics.model_load.labels(model=name).set(time.monotonic() - started)

    def guest_trapped(self, record: RequestRecord, reason: str) -> None:
        self.metrics.guest_traps.labels(model=record.model, module=record.module, reason=reason).inc()

    def token(self, model: str, started: float, now: float, first: bool) -> None:
        self.metrics.token_rate(model).add(now)
        record = current()
        if record is None:
            return
        labels = {"model": model, "module": record.module}
        with record._lock:
            record.model = record.model or model
            previous = record.last_token
            record.tokens += 1
            record.last_token = now
            if record.first_token is None:
                record.first_token = now
        if previous is None:
            self.metrics.time_to_first_token.labels(**labels).observe(now - record.arrival)
        else:
            gap = now - previous
            self.metrics.inter_token_latency.labels(**labels).observe(gap)
            record.max_stall_s = max(record.max_stall_s, gap)
        if first:
            self.metrics.prefill_time.labels(**labels).observe(now - started)


class MeteredModel(ModelWrapper):
    def __init__(self, name: str, inner: NamedModel, meter: Meter) -> None:
        super().__init__(inner)
        self.name = name
        self.meter = meter

    def graph(self, config: bytes | None) -> Graph:
        record = current()
        if record is not None and not record.model:
            record.model = self.name
        return MeteredGraph(self, self.inner.graph(config))


class MeteredGraph(Graph):
    def __init__(self, model: MeteredModel, inner: Graph) -> None:
        self.model = model
        self.inner = inner

    def init_execution_context(self) -> ExecutionContext:
        return MeteredContext(self.model, self.inner.init_execution_context())

    def close(self) -> None:
        self.inner.close()


class MeteredContext(ExecutionContext):
    """Forwards every call; times compute_single and counts each generation once, at fini or close."""

    def __init__(self, model: MeteredModel, inner: ExecutionContext) -> None:
        self.model = model
        self.inner = inner
        self.generating = False
        self.tokens = 0

    def set_input(self, index: int, tensor: Tensor) -> None:
        if index != METADATA_INDEX:
            self._end_generation()  # a new prompt starts a new generation
        self.inner.set_input(index, tensor)

    def compute(self) -> None:
        self.inner.compute()

    def get_output(self, index: int) -> bytes:
        return self.inner.get_output(index)

    def compute_single(self) -> None:
        first = not self.generating
        if first:
            self.generating = True
            self.tokens = 0
        started = time.monotonic()
        try:
            self.inner.compute_single()
        except NNError as e:
            # End of generation is a sampled token too (GGML counts it in output_tokens).
            if e.errno == Errno.END_OF_SEQUENCE:
                self._token(started, first)
            elif first:  # refused before its first token (a prompt too long, no free slot): nothing was processed
                self.generating = False
            raise
        self._token(started, first)

    def _token(self, started: float, first: bool) -> None:
        self.tokens += 1
        self.model.meter.token(self.model.name, started, time.monotonic(), first)

    def get_output_single(self, index: int) -> bytes:
        return self.inner.get_output_single(index)

    def fini_single(self) -> None:
        self._end_generation()  # before the backend resets its counts
        self.inner.fini_single()

    def close(self) -> None:
        self._end_generation()
        self.inner.close()

    def _end_generation(self) -> None:
        if not self.generating:
            return
        self.generating = False
        prompt, generated = self._usage()
        self.model.meter.generation_ended(self.model.name, prompt, generated)

    def _usage(self) -> tuple[int, int]:
        """The backend's own counts, which the guest reports as `usage`; our count when it has none."""
        try:
            doc = json.loads(self.inner.get_output(METADATA_INDEX))
            return int(doc["input_tokens"]), int(doc["output_tokens"])
        except Exception:  # a backend without GGML metadata
            return 0, self.tokens


def meter_models(models: NamedModels, meter: Meter) -> NamedModels:
    """The same names, each wrapped in a MeteredModel."""
    metered = NamedModels()
    for name in models.names():
        inner = models.get(name)
        if inner is not None:
            metered.register(name, MeteredModel(name, inner, meter))
    return metered
