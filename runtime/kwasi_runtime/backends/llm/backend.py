"""The WASI-NN face of the LLM backend, matching WasmEdge's GGML plugin as guests observe it.

- `set_input` index 1 = metadata JSON; any other index = the prompt (UTF-8, dims ignored), tokenised at once.
- `get_output` / `get_output_single` index 1 = `{"input_tokens","output_tokens","llama_build_number","llama_commit"}`.
- `compute` = whole generation (n-predict, reverse-prompt, end of generation); `compute_single` = one token
  per call, END_OF_SEQUENCE (100) on an end-of-generation token, which is still counted.
- CONTEXT_FULL 101, PROMPT_TOO_LONG 102, MODEL_NOT_FOUND 103 (missing file, surfaced when the graph is built).

Metadata sent with `set_input` updates the context that received it (WasmEdge updates the graph); contexts
of one graph therefore never disturb each other.

Contexts of one named model share its KV slots (`set_stream_slots`, default 4; `kwasi-runtime serve` passes
its --max-concurrency): a context holds a slot from its first `compute_single` until end of generation,
`fini_single`, the end of `compute`, or `close`; with every slot taken, a new generation fails with BUSY (4).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch

from kwasi_runtime.backends.llm import extensions
from kwasi_runtime.backends.llm.config import UnsupportedModelError
from kwasi_runtime.backends.llm.generation import LoadedModel, Stream, Utf8Assembler
from kwasi_runtime.backends.llm.options import Options, parse_options
from kwasi_runtime.backends.llm.quantize import compute_type
from kwasi_runtime.backends.llm.scheduler import DEFAULT_SLOTS
from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError, TensorType
from kwasi_runtime.nn.backend_api import Backend, ExecutionContext, Graph, KvCacheUsage, NamedModel, Tensor

log = logging.getLogger(__name__)

# Reported in the metadata JSON where WasmEdge reports its bundled llama.cpp build.
BUILD_NUMBER = 0
COMMIT = "kwasi-pytorch"

PROMPT_INDEX, METADATA_INDEX = 0, 1


def pick_device(target: ExecutionTarget, n_gpu_layers: int) -> torch.device:
    """n-gpu-layers 0 or target CPU keeps the model on the CPU; otherwise CUDA when present."""
    if n_gpu_layers == 0 or target == ExecutionTarget.CPU or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


class LlmNamedModel(NamedModel):
    """A preloaded .gguf file or HF directory. Weights load on first use, once per device and compute type
    (`compute-type`), and are shared by every context asking for that pair."""

    def __init__(self, path: Path, target: ExecutionTarget) -> None:
        self.path = path
        self.target = target
        self._loaded: dict[tuple[str, str], LoadedModel] = {}  # (device, compute type) -> weights
        self._lock = threading.Lock()
        self._live: LlmGraph | None = None
        self._slots = DEFAULT_SLOTS

    def set_stream_slots(self, n: int) -> None:
        """KV slots per context length: how many contexts may generate at once (serve: --max-concurrency)."""
        with self._lock:
            self._slots = max(1, n)
            loaded = list(self._loaded.values())
        for model in loaded:
            model.set_slots(self._slots)

    def kv_cache_usage(self) -> KvCacheUsage:
        """Tokens held by generating contexts over every device's cache (all 0 before any generation)."""
        with self._lock:
            loaded = list(self._loaded.values())
        parts = [model.kv_usage() for model in loaded]
        return KvCacheUsage(tokens=sum(p.tokens for p in parts), capacity_tokens=sum(p.capacity_tokens for p in parts),
                            streams=sum(p.streams for p in parts))

    def context_length(self) -> int | None:
        """The default context (ctx-size 0) of the loaded model; None before its weights are loaded."""
        with self._lock:
            loaded = next(iter(self._loaded.values()), None)
        return loaded.context_length(0) if loaded is not None else None

    def graph(self, config: bytes | None) -> Graph:
        with self._lock:
            # WasmEdge caches per name: a live graph is handed back and the new config ignored.
            if self._live is not None and not self._live.closed:
                return self._live
        options = parse_options(config)
        graph = LlmGraph(self, options)
        if options.enable_log:
            log.info("loaded %s on %s (%s)", self.path, graph.loaded.device, graph.loaded.config)
        with self._lock:
            self._live = graph
        return graph

    def loaded_for(self, options: Options) -> LoadedModel:
        device = pick_device(self.target, options.n_gpu_layers)
        try:
            compute = compute_type(options.compute_type, device).name
        except ValueError as exc:
            raise NNError(Errno.INVALID_ARGUMENT, str(exc)) from None
        key = (str(device), compute)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                loaded = self._loaded[key] = self._load(device, compute)
                loaded.set_slots(self._slots)
        if options.compile:
            loaded.compile_decode()
        return loaded

    def adopt(self, loaded: LoadedModel) -> None:
        """Serves `loaded` for its device and compute type instead of loading the file again."""
        with self._lock:
            loaded.set_slots(self._slots)
            self._loaded[(str(loaded.device), loaded.model.compute.name)] = loaded

    def _load(self, device: torch.device, compute: str) -> LoadedModel:
        try:
            return LoadedModel.from_path(self.path, device, compute)
        except FileNotFoundError as exc:
            raise NNError(Errno.MODEL_NOT_FOUND, str(exc)) from exc
        except (UnsupportedModelError, ValueError, KeyError) as exc:
            log.error("cannot load %s: %s", self.path, exc)
            raise NNError(Errno.INVALID_ARGUMENT, f"cannot load {self.path}: {exc}") from exc

    def forget(self, graph: LlmGraph) -> None:
        with self._lock:
            if self._live is graph:
                self._live = None

    def close(self) -> None:
        with self._lock:
            self._loaded.clear()
            self._live = None


class LlmGraph(Graph):
    def __init__(self, named: LlmNamedModel, options: Options) -> None:
        self.named = named
        self.options = options
        self.loaded = named.loaded_for(options)  # MODEL_NOT_FOUND surfaces here, at load time
        self.closed = False

    def init_execution_context(self) -> ExecutionContext:
        return LlmContext(self)

    def close(self) -> None:
        # Contexts already created keep working (WasmEdge drains after unload); the name gets a fresh graph.
        self.closed = True
        self.named.forget(self)


class LlmContext(ExecutionContext):
    def __init__(self, graph: LlmGraph) -> None:
        self.graph = graph
        self.options = graph.options.copy()
        self.loaded = graph.loaded
        self.stream = self._new_stream()
        self.output = bytearray()
        self.last_piece = b""
        self.embedding_json: bytes | None = None
        self._utf8 = Utf8Assembler()
        self._restart = False  # after END_OF_SEQUENCE the next compute_single starts over from the prompt
        self._tools: extensions.ToolStream | None = None
        self._tool_setup: extensions.ToolSetup | None = None

    def _new_stream(self) -> Stream:
        o = self.options
        stream = Stream(self.loaded, self.loaded.context_length(o.ctx_size), o.sampling, o.batch_size)
        stream.reserve = _reserve(o)
        return stream

    # -- inputs ---------------------------------------------------------------------------------------
    def set_input(self, index: int, tensor: Tensor) -> None:
        if index == METADATA_INDEX:
            self._apply_metadata(tensor.data)
        elif tensor.type is TensorType.I32:  # the prompt as token ids (kwasi extension)
            self.stream.set_prompt(extensions.token_ids(tensor.data, self.loaded.tokenizer.vocab_size))
            self._tool_setup = None
            self._start_outputs()
        else:
            self._set_prompt(tensor.data)

    def _apply_metadata(self, raw: bytes) -> None:
        applied = self.options.update(raw)
        o = self.options
        loaded = self.graph.named.loaded_for(o)
        if loaded is not self.loaded:  # n-gpu-layers moved the model to another device
            prompt = self.stream.prompt
            self.stream.release()
            self.loaded = loaded
            self.stream = self._new_stream()
            self.stream.set_prompt(prompt)
        self.stream.resize(self.loaded.context_length(o.ctx_size))
        self.stream.sampler.params = o.sampling
        if self.stream.prompt and set(applied) & {"grammar", "json-schema", "tool-choice", "parallel-tool-calls"}:
            self.stream.sampler.constraint = extensions.constraint_for(self.loaded.tokenizer, o, self._tool_setup)
        self.stream.batch_size = max(1, o.batch_size)
        self.stream.reserve = _reserve(o)

    def _set_prompt(self, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        tok = self.loaded.tokenizer
        add_special = True
        self._tool_setup = None
        if self.options.chat:
            text, self._tool_setup = extensions.chat_prompt(tok, text, self.options)
            add_special = not (tok.bos_token and text.startswith(tok.bos_token))
        self.stream.set_prompt(tok.encode(text, add_special=add_special))
        self._start_outputs()

    def _start_outputs(self) -> None:
        # The grammar (grammar, json-schema or a forced tool call) follows this prompt's generation.
        self.stream.sampler.constraint = extensions.constraint_for(self.loaded.tokenizer, self.options,
                                                                   self._tool_setup)
        self._clear_outputs()

    def _clear_outputs(self) -> None:
        self.output.clear()
        self.last_piece = b""
        self.embedding_json = None
        self._utf8 = Utf8Assembler()
        self._restart = False
        tools = self._tool_setup
        self._tools = extensions.ToolStream(tools, self.options.parallel_tool_calls) if tools else None
        self.stream.sampler.last_logprobs = None

    # -- whole generation -----------------------------------------------------------------------------
    def compute(self) -> None:
        o = self.options
        if o.embedding:
            vector = self.stream.embedding()
            self.embedding_json = json.dumps({"n_embedding": len(vector), "embedding": vector}).encode()
            return
        self.stream.reset()
        self._clear_outputs()
        stop = o.reverse_prompt.encode()
        eog = self.loaded.tokenizer.eog_ids
        produced = 0
        try:
            while o.n_predict < 0 or produced < o.n_predict:
                token = self.stream.step()  # CONTEXT_FULL propagates; the text so far stays readable
                produced += 1
                if token in eog and not o.ignore_eos:
                    break  # WasmEdge maps end of generation to success in compute
                piece = self.loaded.tokenizer.piece(token)
                self.output += piece
                self.last_piece = piece
                if o.stream_stdout:
                    sys.stdout.buffer.write(piece)
                    sys.stdout.flush()
                if stop and stop in self.output[-(len(stop) + len(piece)):]:
                    break
        finally:
            self.stream.release()  # the output stays readable; a later compute_single re-takes a slot
        if o.enable_log:
            log.info("prompt %d tokens, generated %d tokens", len(self.stream.prompt), len(self.stream.tokens))

    # -- streaming ------------------------------------------------------------------------------------
    def compute_single(self) -> None:
        if self._restart:
            self.stream.reset()
            self._clear_outputs()
        token = self.stream.step()
        if token in self.loaded.tokenizer.eog_ids and not self.options.ignore_eos:
            # Counted in output_tokens, but its text (e.g. "<|im_end|>") is not part of the answer; content a
            # tool-call parser still held back is (read it with get_output_single after END_OF_SEQUENCE).
            self.last_piece = self._tools.finish() if self._tools is not None else b""
            self._restart = True
            self.stream.release()  # the next call starts over from the prompt anyway
            raise NNError(Errno.END_OF_SEQUENCE, "end of generation")
        piece = self.loaded.tokenizer.piece(token)
        self.output += piece
        if self._tools is not None:
            self.last_piece = self._tools.feed(piece)
        else:
            self.last_piece = self._utf8.feed(piece).encode() if self.options.complete_utf8 else piece

    def get_output_single(self, index: int) -> bytes:
        if index == METADATA_INDEX:
            return self._metadata()
        lp, tok = self.stream.sampler.last_logprobs, self.loaded.tokenizer
        if index == extensions.TOOL_DELTAS:
            return self._tools.deltas_json() if self._tools is not None else b""
        if index == extensions.CHAT_LOGPROBS:
            return extensions.chat_logprobs(tok, lp)
        if index == extensions.COMPLETION_LOGPROBS:
            return extensions.completion_logprobs(tok, lp)
        return self.last_piece

    def fini_single(self) -> None:
        self.stream.reset()
        self._clear_outputs()

    # -- outputs --------------------------------------------------------------------------------------
    def get_output(self, index: int) -> bytes:
        if index == METADATA_INDEX:
            return self._metadata()
        if index == extensions.TOOL_CALLS:
            return self._tools.calls_json() if self._tools is not None else b"[]"
        if index in (extensions.PROMPT_IDS, extensions.PROMPT_TEXT):
            return extensions.prompt_outputs(self.loaded.tokenizer, self.stream.prompt)[index]
        if self.embedding_json is not None:
            return self.embedding_json
        return bytes(self.output)

    def _metadata(self) -> bytes:
        return json.dumps({
            "input_tokens": len(self.stream.prompt),
            "output_tokens": len(self.stream.tokens),
            "llama_build_number": BUILD_NUMBER,
            "llama_commit": COMMIT,
        }).encode()

    def close(self) -> None:
        self.stream.release()  # the KV slot goes back to the model's scheduler at once


class LlmBackend(Backend):
    """GGUF files (GGML encoding) and HF directories (PyTorch encoding) with Llama-family models."""

    def preload(self, paths: Sequence[Path], target: ExecutionTarget) -> NamedModel:
        if len(paths) != 1:
            raise ValueError(f"an LLM preload takes exactly one path (a .gguf file or a model directory), "
                             f"got {len(paths)}")
        # Lazy like WasmEdge's GGML preload: a missing file is MODEL_NOT_FOUND when a guest loads the graph.
        return LlmNamedModel(Path(paths[0]), target)

    def load(self, builders: Sequence[bytes], target: ExecutionTarget) -> Graph:
        """Plain `load`: builder 0 = GGUF bytes, optional builder 1 = metadata JSON.

        WasmEdge's `preload:<path>` marker is deliberately not honoured here: it would let an untrusted
        guest make the host open any file; named models are how a guest reaches host files."""
        if not builders or not builders[0]:
            raise NNError(Errno.INVALID_ARGUMENT, "load needs the GGUF bytes as builder 0")
        config = builders[1] if len(builders) > 1 else None
        if not builders[0].startswith(b"GGUF"):
            raise NNError(Errno.INVALID_ENCODING, "builder 0 is not a GGUF file")
        options = parse_options(config)  # validate before the expensive part
        workdir = Path(tempfile.mkdtemp(prefix="kwasi-llm-"))
        path = workdir / "model.gguf"
        try:
            path.write_bytes(builders[0])
            named = LlmNamedModel(path, target)
            graph = LlmGraph(named, options)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        # The file stays while the graph lives: metadata naming another device or compute type reloads it.
        weakref.finalize(named, shutil.rmtree, workdir, True)
        return graph


def _reserve(o: Options) -> int:
    return o.n_predict if o.reserve_n_predict and o.n_predict > 0 else 0
