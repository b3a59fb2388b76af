"""A real `kwasi-runtime serve` process and a bounded load through it with the official `openai` client.

The load covers what the dashboards show: streamed and whole answers, a burst past --max-concurrency and
--max-queue (429s and queueing), a client that leaves mid-stream (499), a long prompt, and one that does not
fit the context (400). `LoadReport` counts what the client saw, to compare with what Prometheus stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai
from openai.types.chat import ChatCompletionMessageParam

from kwasi_testing import REPO
from kwasi_testing.net import free_port
from kwasi_testing.serving import request


class RuntimeProcess:
    """`kwasi-runtime serve` on 127.0.0.1 with one named model `default`; stopped with SIGTERM (drain)."""

    def __init__(self, gguf: Path, *, max_concurrency: int = 2, max_queue: int = 1, timeout_s: float = 120,
                 ready_timeout_s: float = 180) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO / "runtime")}
        # A file, not a pipe: a pipe nobody reads until the end fills with the server's request log and then
        # blocks its event loop in a log write.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the process, closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kwasi_runtime.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--nn-preload", f"default:GGML:AUTO:{gguf}", "--max-concurrency", str(max_concurrency),
             "--max-queue", str(max_queue), "--timeout", str(timeout_s), "--grace-period", "5", "--no-cache"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + ready_timeout_s
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.stderr()
                self.stop()
                raise RuntimeError(f"kwasi-runtime serve did not become ready: {log}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return request(self.url, path="/readyz", timeout=2).status == 200
        except OSError:
            return False

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class LoadReport:
    """What the client saw, by HTTP status (499: the client closed the stream itself)."""

    statuses: Counter[int] = field(default_factory=Counter)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, status: int, prompt: int = 0, completion: int = 0) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.prompt_tokens += prompt
            self.completion_tokens += completion


def _messages(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


class Load:
    def __init__(self, url: str, max_tokens: int = 24, request_timeout_s: float = 120) -> None:
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                                    timeout=request_timeout_s)
        self.max_tokens = max_tokens
        self.report = LoadReport()

    def streamed(self, text: str = "Tell me about WebAssembly.", max_tokens: int | None = None) -> int:
        """One streamed answer, read to the end; its HTTP status."""
        try:
            stream = self.client.chat.completions.create(
                model="default", messages=_messages(text), stream=True, max_tokens=max_tokens or self.max_tokens,
                temperature=0.7, stream_options={"include_usage": True})
            usage = None
            for chunk in stream:
                usage = chunk.usage or usage
            self.report.add(200, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
            return 200
        except openai.APIStatusError as e:
            self.report.add(e.status_code)
            return e.status_code

    def whole(self, text: str = "What is a KV cache?", max_tokens: int | None = None) -> None:
        try:
            reply = self.client.chat.completions.create(
                model="default", messages=_messages(text), max_tokens=max_tokens or self.max_tokens)
            usage = reply.usage
            self.report.add(200, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
        except openai.APIStatusError as e:
            self.report.add(e.status_code)

    def abort(self, after_chunks: int = 3) -> None:
        """A client that reads a few chunks of a long answer and hangs up."""
        stream = self.client.chat.completions.create(
            # Long, but inside the smallest test model's context: a larger max_tokens is a 400, as at OpenAI.
            model="default", messages=_messages("Write a long story."), stream=True, max_tokens=200)
        for i, _ in enumerate(stream):
            if i + 1 >= after_chunks:
                break
        stream.close()
        self.report.add(499)

    def burst(self, n: int) -> None:
        """`n` streams at once: past the slots and the queue, some are refused with 429."""
        threads = [threading.Thread(target=self.streamed, kwargs={"max_tokens": self.max_tokens * 2})
                   for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def run(self, rounds: int = 3, pause_s: float = 2.0, long_prompt_words: int = 40,
            too_long_words: int = 400) -> LoadReport:
        """Rounds of the mix, spread over time so rate windows see traffic at more than one point, beside one
        steady stream of long answers: gauges are read only at scrapes (KV usage, running requests), and the
        mix's own requests can all fall between two scrapes on a fast model."""
        done = threading.Event()

        def steady() -> None:
            while not done.is_set():
                # Long, but inside the smallest test model's context; refused (a burst holds the slots), it
                # backs off as a client told Retry-After would.
                if self.streamed("Write a long story.", max_tokens=200) != 200:
                    done.wait(0.2)

        background = threading.Thread(target=steady, daemon=True)
        background.start()
        try:
            for r in range(rounds):
                for _ in range(3):
                    self.streamed()
                self.whole()
                self.burst(6)
                self.abort()
                self.streamed(" ".join(["long"] * long_prompt_words), max_tokens=4)
                if r == 0:
                    self.whole(" ".join(["overflow"] * too_long_words), max_tokens=4)
                time.sleep(pause_s)
        finally:
            done.set()
            background.join()
        self.client.close()
        return self.report
