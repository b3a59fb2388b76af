"""Generation on top of the model: loaded weights shared per device, and per-stream decode state.

`LoadedModel` is what a named model shares between graphs and contexts, including its slot schedulers (one per
context length), which batch the decode steps of concurrent streams. `Stream` is one generation (one WASI-NN
context, one KV-cache slot while it generates) with WasmEdge's step semantics. `LlmGenerator` is the plain Python API
(generate / stream) that benchmarks and tests call without wasm.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kwasi_runtime.backends.llm.chat import render_chat
from kwasi_runtime.backends.llm.compiled import CompiledDecode
from kwasi_runtime.backends.llm.config import ModelConfig
from kwasi_runtime.backends.llm.cuda_graphs import graphs_supported
from kwasi_runtime.backends.llm.forward_thread import forward_thread, one_intra_op_thread, run_forward
from kwasi_runtime.backends.llm.load import load_checkpoint
from kwasi_runtime.backends.llm.model import Transformer, build_model
from kwasi_runtime.backends.llm.quantize import compute_type
from kwasi_runtime.backends.llm.sampling import Sampler, SamplingParams
from kwasi_runtime.backends.llm.scheduler import DEFAULT_SLOTS, Slot, SlotScheduler
from kwasi_runtime.backends.llm.tokenizer import TextTokenizer
from kwasi_runtime.nn.abi import Errno, NNError
from kwasi_runtime.nn.backend_api import KvCacheUsage

log = logging.getLogger(__name__)

# llama.cpp refuses prompts longer than n_ctx - 4 (room for a few generated tokens).
PROMPT_MARGIN = 4


@dataclass
class LoadedModel:
    """Weights on one device plus the tokenizer: loaded once per named model and shared by every stream."""

    model: Transformer
    tokenizer: TextTokenizer
    slots: int = DEFAULT_SLOTS  # KV slots per context length: the most streams generating at once
    compiled: CompiledDecode | None = field(default=None, repr=False, compare=False)
    _schedulers: dict[int, SlotScheduler] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @classmethod
    def from_path(cls, path: Path, device: torch.device | str = "cpu", compute: str | None = None) -> LoadedModel:
        """Loads `path` onto `device` under the named compute type (`quantize.COMPUTE_TYPES`; None: the
        device's default). ValueError for an unknown name."""
        dev = torch.device(device)
        ctype = compute_type(compute, dev)

        def load() -> LoadedModel:
            # f32 casts each float tensor as it is read; the others keep the stored dtype until each matrix
            # is converted, so peak host memory stays near the source's size.
            checkpoint = load_checkpoint(path, ctype.dtype if ctype.exact else None)
            model = build_model(checkpoint.config, checkpoint.tensors, dev, ctype)
            return cls(model=model, tokenizer=checkpoint.tokenizer)

        return run_forward(load)  # quantizing is parallel torch work too: it belongs on the forward thread

    def scheduler(self, ctx_size: int) -> SlotScheduler:
        """The shared scheduler for streams of this context length (allocated on first use, then fixed)."""
        with self._lock:
            sched = self._schedulers.get(ctx_size)
            if sched is None:
                sched = self._schedulers[ctx_size] = SlotScheduler(self.model, self.slots, ctx_size)
                if self.compiled is not None:
                    sched.decode_fn = self.compiled
            return sched

    def compile_decode(self) -> CompiledDecode | None:
        """Starts compiling the decode step on a background thread (CPU only, once; `compiled.py`); decode
        switches to it when it is ready. CUDA replays captured graphs instead: None there. So is a model with
        the fused CPU decode kernels: its step is faster than the compiled one (bench/README.md, issue 14)."""
        if self.model.fused is not None:
            log.info("compile skipped: the fused CPU decode kernels are faster than the compiled step")
            return None
        with self._lock:
            if self.compiled is None and self.device.type == "cpu":
                self.compiled = CompiledDecode(self.model, forward_thread().threads)
                for sched in self._schedulers.values():
                    sched.decode_fn = self.compiled
            return self.compiled

    def set_slots(self, n: int) -> None:
        """Slot count for schedulers created from now on; an idle existing one is dropped and re-created."""
        with self._lock:
            self.slots = max(1, n)
            for size, sched in list(self._schedulers.items()):
                if sched.in_use() == 0:
                    del self._schedulers[size]

    def kv_usage(self) -> KvCacheUsage:
        """Tokens held, token capacity and streams holding a slot, over every context length."""
        with self._lock:
            scheds = list(self._schedulers.values())
        return KvCacheUsage(tokens=sum(s.tokens_held() for s in scheds),
                            capacity_tokens=sum(s.n_slots * s.length for s in scheds),
                            streams=sum(s.in_use() for s in scheds))

    def context_length(self, requested: int) -> int:
        """`ctx-size` 0 means min(4096, trained context), as llama.cpp's defaults give for most models."""
        return requested if requested > 0 else min(4096, self.config.max_seq_len)


class Stream:
    """One generation: prompt, a KV slot of the shared scheduler while generating, sampler, generated tokens.

    `step()` follows WasmEdge's compute_single: the first call evaluates the prompt and samples a token;
    each later call feeds the previous token back and samples the next one. Every sampled token is
    appended, end-of-generation included; stopping is the caller's decision. `step()` blocks while the
    scheduler runs the forward, batched with every other stream of the model waiting at that moment.
    `release()` gives the slot back (end of generation, fini_single, close); a later step re-takes one.
    """

    def __init__(self, loaded: LoadedModel, ctx_size: int, sampling: SamplingParams | None = None,
                 batch_size: int = 512, use_cuda_graphs: bool = True) -> None:
        self.loaded = loaded
        self.ctx_size = ctx_size
        self.batch_size = max(1, batch_size)
        self.sampler = Sampler(sampling or SamplingParams())
        self.prompt: list[int] = []
        self.tokens: list[int] = []
        self._history: list[int] = []  # prompt + tokens, for penalties
        self._sched = loaded.scheduler(ctx_size)
        self._slot: Slot | None = None
        self._release_on_gc: weakref.finalize | None = None  # type: ignore[type-arg]
        self._use_graphs = use_cuda_graphs and graphs_supported(loaded.device)
        self._logits: torch.Tensor | None = None
        self._pending: int | None = None  # last sampled token, fed to the model on the next step
        self._n_past = 0
        self.started = False
        self.reserve = 0  # tokens the prompt must leave free in the context (reserve-n-predict)

    @property
    def model(self) -> Transformer:
        return self.loaded.model

    def set_prompt(self, ids: Sequence[int]) -> None:
        self.prompt = list(ids)
        self.reset()

    def reset(self) -> None:
        """Forget generated tokens; the next step re-evaluates the prompt (fini_single, or a new prompt)."""
        self.release()
        self.tokens = []
        self._history = list(self.prompt)
        self._logits = None
        self._pending = None
        self._n_past = 0
        self.started = False

    def resize(self, ctx_size: int) -> None:
        if ctx_size != self.ctx_size:
            self.reset()
            self.ctx_size = ctx_size
            self._sched = self.loaded.scheduler(ctx_size)

    @property
    def holds_slot(self) -> bool:
        return self._slot is not None

    def release(self) -> None:
        """Gives the KV slot back; tokens and counts stay readable. Idempotent."""
        if self._release_on_gc is not None:
            self._release_on_gc()  # runs scheduler.release once and disarms the finalizer
            self._release_on_gc = None
        self._slot = None

    def _take_slot(self) -> Slot:
        slot = self._sched.acquire()
        self._slot = slot
        # A context dropped without close() (a trapped guest's store, a test) must not leak its slot.
        self._release_on_gc = weakref.finalize(self, self._sched.release, slot)
        return slot

    def step(self) -> int:
        if not self.started:
            self._start()
        elif self._slot is None:
            self._resume()
        elif self._pending is not None:
            if self._n_past >= self.ctx_size:
                raise NNError(Errno.CONTEXT_FULL, f"context of {self.ctx_size} tokens is full")
            self._logits = self._decode(self._pending)
            self._pending = None
        assert self._logits is not None
        with one_intra_op_thread():  # see forward_thread.py: stream threads start no OpenMP teams
            token = self.sampler.sample(self._logits, self._history)
        self.tokens.append(token)
        self._history.append(token)
        self._pending = token
        return token

    def _start(self) -> None:
        if not self.prompt:
            raise NNError(Errno.INVALID_ARGUMENT, "no prompt set")
        if len(self.prompt) > self.ctx_size - PROMPT_MARGIN:
            raise NNError(Errno.PROMPT_TOO_LONG,
                          f"prompt of {len(self.prompt)} tokens exceeds context {self.ctx_size} - {PROMPT_MARGIN}")
        if len(self.prompt) + self.reserve > self.ctx_size:
            raise NNError(Errno.PROMPT_TOO_LONG, f"prompt of {len(self.prompt)} tokens plus {self.reserve} to "
                                                 f"generate exceeds context {self.ctx_size}")
        self.reset()
        self.sampler.reset()
        self._logits = self._prefill(self.prompt)
        self.started = True

    def _resume(self) -> None:
        """Stepping on after the slot was given back (compute() then compute_single): re-evaluate what was fed."""
        fed = self.prompt + self.tokens  # the pending token included: its logits are the next step's
        if len(fed) > self.ctx_size:
            raise NNError(Errno.CONTEXT_FULL, f"context of {self.ctx_size} tokens is full")
        self._logits = self._prefill(fed)
        self._pending = None

    def _prefill(self, ids: Sequence[int]) -> torch.Tensor:
        slot = self._slot or self._take_slot()
        logits = self._sched.prefill(slot, ids, self.batch_size)
        self._n_past = len(ids)
        return logits

    def _decode(self, token: int) -> torch.Tensor:
        assert self._slot is not None
        logits = self._sched.decode(self._slot, token, self._use_graphs)
        self._n_past += 1
        return logits

    @torch.inference_mode()
    def embedding(self) -> list[float]:
        """Mean-pooled, L2-normalised final hidden state of the prompt (llama.cpp's mean pooling)."""
        if not self.prompt:
            raise NNError(Errno.INVALID_ARGUMENT, "no prompt set")
        if len(self.prompt) > min(self.batch_size, self.ctx_size):
            raise NNError(Errno.PROMPT_TOO_LONG,
                          f"embedding input of {len(self.prompt)} tokens exceeds batch-size {self.batch_size}")
        device = self.loaded.device
        prompt = self.prompt

        @torch.inference_mode()
        def pooled_state() -> torch.Tensor:
            # A private cache of exactly the prompt: embeddings are one forward, never decoded on or batched.
            cache = self.model.new_cache(1, len(prompt))
            tokens = torch.tensor([prompt], device=device)
            positions = torch.arange(len(prompt), device=device).unsqueeze(0)
            hidden = self.model.hidden_states(tokens, positions, cache, kv_len=len(prompt))[0]
            return F.normalize(hidden.float().mean(dim=0), dim=0)

        pooled = run_forward(pooled_state)
        self.reset()  # the next step starts a generation from the prompt
        return [float(x) for x in pooled.cpu()]


@dataclass
class Generation:
    text: str
    tokens: list[int]
    prompt_tokens: int
    stop_reason: str  # "eog" | "length" | "context-full"


class LlmGenerator:
    """Plain Python API over a loaded model: what the WASI-NN contexts do, without wasm."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu", compute: str | None = None) -> LlmGenerator:
        return cls(LoadedModel.from_path(Path(path), device, compute))

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.loaded.tokenizer

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        tok = self.tokenizer
        return render_chat(tok.chat_template, messages, tok.bos_token, tok.eos_token)

    def encode_prompt(self, prompt: str | Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of a text prompt, or of a list of chat messages rendered with the model's template."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        text = self.render(prompt)
        tok = self.tokenizer
        # Templates that write BOS themselves (Llama-3) must not get a second one from the tokenizer.
        add_special = not (tok.bos_token and text.startswith(tok.bos_token))
        return tok.encode(text, add_special=add_special)

    def new_stream(self, ctx_size: int = 0, sampling: SamplingParams | None = None,
                   batch_size: int = 512) -> Stream:
        return Stream(self.loaded, self.loaded.context_length(ctx_size), sampling, batch_size)

    def stream_tokens(self, prompt: str | Sequence[Mapping[str, Any]], max_tokens: int = 256,
                      sampling: SamplingParams | None = None, ctx_size: int = 0,
                      ignore_eos: bool = False) -> Iterator[int]:
        """Yields generated token ids, stopping at end of generation, max_tokens or a full context."""
        stream = self.new_stream(ctx_size, sampling)
        stream.set_prompt(self.encode_prompt(prompt))
        yield from self._run(stream, max_tokens, ignore_eos, [])

    def _run(self, stream: Stream, max_tokens: int, ignore_eos: bool, reason: list[str]) -> Iterator[int]:
        """Steps `stream` until a stop; appends the stop reason to `reason`."""
        limit = max_tokens if max_tokens >= 0 else math.inf
        produced = 0
        try:
            while produced < limit:
                try:
                    token = stream.step()
                except NNError as exc:
                    if exc.errno != Errno.CONTEXT_FULL:
                        raise
                    reason.append("context-full")
                    return
                produced += 1
                if token in self.tokenizer.eog_ids and not ignore_eos:
                    reason.append("eog")
                    return
                yield token
            reason.append("length")
        finally:
            stream.release()  # also when the consumer stops iterating early

    def stream(self, prompt: str | Sequence[Mapping[str, Any]], max_tokens: int = 256,
               sampling: SamplingParams | None = None, ctx_size: int = 0) -> Iterator[str]:
        """Yields text deltas made only of complete UTF-8 characters."""
        decoder = Utf8Assembler()
        for token in self.stream_tokens(prompt, max_tokens, sampling, ctx_size):
            text = decoder.feed(self.tokenizer.piece(token))
            if text:
                yield text
        tail = decoder.flush()
        if tail:
            yield tail

    def generate(self, prompt: str | Sequence[Mapping[str, Any]], max_tokens: int = 256,
                 sampling: SamplingParams | None = None, ctx_size: int = 0,
                 ignore_eos: bool = False) -> Generation:
        stream = self.new_stream(ctx_size, sampling)
        stream.set_prompt(self.encode_prompt(prompt))
        reason: list[str] = []
        tokens = list(self._run(stream, max_tokens, ignore_eos, reason))
        return Generation(text=self.tokenizer.decode(tokens), tokens=tokens, prompt_tokens=len(stream.prompt),
                          stop_reason=reason[0])


class Utf8Assembler:
    """Turns raw token pieces into text, holding back an incomplete trailing UTF-8 sequence."""

    def __init__(self) -> None:
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
