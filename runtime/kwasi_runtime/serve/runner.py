"""Running one request's guest: admission, a worker thread per guest run, its output streamed back, and the
request's end observed once both the handler and the guest are through.

A client that goes away sets the run's cancel event: its next WASI-NN call traps and the host frees its contexts
(KV slot) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from kwasi_runtime.sandbox import Limits, RunResult, Sandbox, WasiSetup
from kwasi_runtime.serve import metering, openai
from kwasi_runtime.serve.admission import Admission, QueueFull
from kwasi_runtime.serve.config import ServeConfig
from kwasi_runtime.serve.guest_io import OutputPipe, StderrTail
from kwasi_runtime.serve.metering import Meter, RequestRecord
from kwasi_runtime.serve.responses import Flavour, error_response, guest_failure
from kwasi_runtime.serve.wagi import Head, PreludeParser

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's code for "client closed the request", used in metrics only
RETRY_AFTER_S = "1"  # a full queue drains in about a generation; clients back off and retry
# The guest's own deadline fires first and cleans up; the server answers a guest stuck in a host call after this.
DEADLINE_GRACE_S = 0.5


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
    # The gauge labels taken at admission: a WAGI guest names its model only while it runs.
    labels: dict[str, str] = field(default_factory=dict)
    response: web.StreamResponse | None = None  # once its headers are out
    timed_out: bool = False  # the request's deadline ended it from the server's side


class GuestRunner:
    """Owns the guest slots (admission), the worker threads and the jobs in flight."""

    def __init__(self, config: ServeConfig, meter: Meter) -> None:
        self.config = config
        self.meter = meter
        self.metrics = meter.metrics
        self.admission = Admission(config.max_concurrency, config.max_queue)
        self.executor = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="kwasi-guest")
        self.jobs: set[Job] = set()
        self.idle = asyncio.Event()  # set whenever a job ends

    def refuse(self, record: RequestRecord, response: web.Response) -> web.Response:
        """A request answered without running a guest still counts in the request metrics."""
        reason = "abort" if response.status == 429 else "error"
        self.meter.request_ended(record, response.status, reason)
        return response

    def cancel_all(self) -> None:
        for job in list(self.jobs):
            job.cancel.set()
            job.pipe.close_reader()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, request: web.Request, guest: Guest, record: RequestRecord, env: list[tuple[str, str]],
                   stdin: bytes, flavour: Flavour) -> web.StreamResponse:
        labels = {"model": record.model, "module": record.module}
        # The request's deadline covers its whole life: the queue, the guest, and a guest blocked in a host call.
        deadline = record.arrival + self.config.timeout_s if self.config.timeout_s else None
        waiting = self.metrics.requests_waiting.labels(**labels)
        waiting.inc()
        try:
            async with asyncio.timeout_at(deadline):
                await self.admission.acquire()
        except QueueFull:
            msg = f"server busy: {self.admission.running} running, {self.admission.waiting} queued"
            return self.refuse(record, error_response(flavour, 429, msg, headers={"Retry-After": RETRY_AFTER_S}))
        except TimeoutError:
            msg = f"the request waited for a guest slot past its deadline ({self.config.timeout_s:g} s)"
            return self.refuse(record, error_response(flavour, 504, msg))
        except asyncio.CancelledError:
            self.meter.request_ended(record, CLIENT_CLOSED, "abort")
            raise
        finally:
            waiting.dec()
        record.admitted = time.monotonic()
        loop = asyncio.get_running_loop()
        job = Job(record, OutputPipe(loop), loop.create_future(), labels=labels)
        self.jobs.add(job)
        self.metrics.requests_running.labels(**labels).inc()
        assert guest.sandbox is not None
        self.executor.submit(self._guest_thread, guest.sandbox, job, env, stdin, loop, deadline)
        try:
            # The guest's own deadline (epochs in wasm, interrupt polling in host calls) normally ends it first
            # and frees what it holds; this one answers the client even if a host call never returns.
            try:
                async with asyncio.timeout_at(None if deadline is None else deadline + DEADLINE_GRACE_S):
                    return await self._stream(request, job, flavour)
            except TimeoutError:
                return await self._deadline_passed(request, job, flavour)
        except (asyncio.CancelledError, ConnectionResetError) as gone:
            # The client went away: stop the guest at its next WASI-NN call (frees its KV slot).
            # A client that leaves right after the last event (e.g. `[DONE]`) races the guest's exit; only a
            # guest that was actually interrupted makes the request an abort (see _part_done).
            job.cancel.set()
            job.pipe.close_reader()
            if isinstance(gone, asyncio.CancelledError):
                raise
            # A reset seen by a write, before aiohttp noticed the lost connection: an everyday event, not a
            # server error. Returned, the response's end fails quietly; raised, aiohttp logs a 500 traceback.
            return job.response or web.Response(status=CLIENT_CLOSED)
        finally:
            self._part_done(job)

    async def _deadline_passed(self, request: web.Request, job: Job, flavour: Flavour) -> web.StreamResponse:
        """The deadline passed and the guest is still inside a host call: stop it, and answer the client now."""
        job.timed_out = True
        job.cancel.set()
        job.pipe.close_reader()
        job.status, job.finish_reason = 504, "error"
        message = f"the request exceeded its deadline ({self.config.timeout_s:g} s)"
        response = job.response
        if response is None:
            return error_response(flavour, 504, message)
        if "text/event-stream" in response.headers.get("Content-Type", ""):
            await response.write(b"data: " + openai.error_body(message, "server_error", code="timeout") + b"\n\n")
            await response.write_eof()
        elif request.transport is not None:
            request.transport.abort()  # headers are out: an incomplete chunked body says it failed
        return response

    def _guest_thread(self, sandbox: Sandbox, job: Job, env: list[tuple[str, str]], stdin: bytes,
                      loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
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
                            fuel=self.config.fuel, deadline=deadline)
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
        self.metrics.requests_running.labels(**job.labels).dec()
        if result.trap is not None and not result.cancelled:
            # A deadline is an interrupt whether an epoch check or a host call (nn.interrupt) noticed it.
            reason = "interrupt" if result.timed_out else result.trap_code.name.lower() if result.trap_code else "error"
            self.meter.guest_trapped(job.record, reason)
        if job.stderr.data:
            log.debug("guest %s stderr: %s", job.record.module, job.stderr.data.decode("utf-8", "replace"))
        self._part_done(job)

    async def _stream(self, request: web.Request, job: Job, flavour: Flavour) -> web.StreamResponse:
        parser = PreludeParser()
        decided: tuple[Head, bytes] | None = None
        while decided is None:
            chunk = await job.pipe.read()
            if chunk is None:
                # The guest ended before its output decided anything: its result decides.
                head, body = parser.finish()
                result = await asyncio.shield(job.done)
                failure = guest_failure(result, bool(body) or head.status != 200, flavour)
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
        job.response = response
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
        self.idle.set()
        result = job.done.result() if job.done.done() else None
        reason: str | None
        if job.timed_out:
            status, reason = 504, "error"
        elif result is not None and result.cancelled:
            status, reason = CLIENT_CLOSED, "abort"
        else:
            status = job.status or 500
            reason = job.finish_reason or job.stderr.finish_reason()
            if reason is None:
                reason = "error" if status >= 500 or (result is not None and _failed(result)) else "stop"
        self.meter.request_ended(job.record, status, reason)

def run_guest(sandbox: Sandbox, wasi: WasiSetup, limits: Limits, cancel: threading.Event,
              record: RequestRecord) -> RunResult:
    """`Sandbox.run`, keeping its instantiation time for the per-request sandbox-cost metric."""
    result = sandbox.run(wasi, limits, cancel=cancel)
    record.instantiate_s = result.instantiate_s
    return result


def _failed(result: RunResult) -> bool:
    return result.exit_code != 0
