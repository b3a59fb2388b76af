"""WasmEdge GGML metadata JSON (load config or `set_input` index 1) parsed into typed options.

Keys are applied only when present; unknown keys are ignored (guests send extras such as "llama3"); a value
of the wrong JSON type is INVALID_ARGUMENT and unparsable JSON is INVALID_ENCODING, as in WasmEdge's
metadata parser.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from kwasi_runtime.backends.llm.sampling import SamplingParams
from kwasi_runtime.nn.abi import Errno, NNError

log = logging.getLogger(__name__)

DEFAULT_CTX_SIZE = 4096
DEFAULT_BATCH_SIZE = 512
MAX_N_PROBS = 20  # OpenAI's top_logprobs limit


@dataclass
class Options:
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n_predict: int = -1  # < 0: until end of generation or context full
    ctx_size: int = 0  # 0: min(DEFAULT_CTX_SIZE, the model's trained context)
    batch_size: int = DEFAULT_BATCH_SIZE  # prefill chunk; also the embedding-mode prompt limit
    ignore_eos: bool = False
    reverse_prompt: str = ""
    n_gpu_layers: int = -1  # 0 keeps the model on CPU; anything else uses CUDA when the target allows
    compute_type: str = ""  # kwasi: f32 | bf16 | int8 | int4; "" or "auto": the device's default (quantize.py)
    compile: bool = False  # kwasi: compile the CPU decode step in the background (compiled.py)
    enable_log: bool = False
    stream_stdout: bool = False
    embedding: bool = False
    # kwasi extensions (not WasmEdge keys):
    chat: bool = False  # the prompt is a JSON list of {role, content}, rendered with the model's chat template
    complete_utf8: bool = False  # get_output_single returns only whole UTF-8 characters
    # The prompt must leave room for n-predict tokens, else PROMPT_TOO_LONG before any forward (OpenAI's and
    # vLLM's 400 for prompt + max_tokens past the context, instead of a generation cut short by CONTEXT_FULL).
    reserve_n_predict: bool = False
    # Constrained output (WasmEdge keys): llama.cpp GBNF, or a JSON schema as a string; `grammar` wins.
    grammar: str = ""
    json_schema: str = ""
    # OpenAI tools (kwasi): rendered into the chat template, parsed back from the output (tool_calls.py).
    tools: list[Any] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"  # auto | none | required | {"type": "function", "function": {name}}
    parallel_tool_calls: bool = True

    def copy(self) -> Options:
        sampling = dataclasses.replace(self.sampling, logit_bias=dict(self.sampling.logit_bias))
        return dataclasses.replace(self, sampling=sampling, tools=list(self.tools))

    def update(self, raw: bytes | str) -> list[str]:
        """Applies metadata JSON in place; returns the names of the keys that changed something."""
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NNError(Errno.INVALID_ENCODING, f"metadata is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise NNError(Errno.INVALID_ARGUMENT, "metadata must be a JSON object")
        # Validate every key before applying any, so a rejected document leaves the options untouched.
        pending: list[tuple[str, str, Any]] = []
        for key, value in doc.items():
            spec = _KEYS.get(key)
            if spec is None:
                log.debug("ignoring unknown metadata key %r", key)
                continue
            kind, target, attr = spec
            pending.append((target, attr, _checked(key, kind, value)))
        for target, attr, value in pending:
            setattr(self.sampling if target == "sampling" else self, attr, value)
        applied = [key for key in doc if key in _KEYS]
        # WasmEdge clamps negative sampling values to 0.
        s = self.sampling
        s.temp, s.top_p, s.repeat_penalty = max(s.temp, 0.0), max(s.top_p, 0.0), max(s.repeat_penalty, 0.0)
        s.presence_penalty, s.frequency_penalty = max(s.presence_penalty, 0.0), max(s.frequency_penalty, 0.0)
        s.n_probs = min(max(s.n_probs, 0), MAX_N_PROBS)
        return applied


def parse_options(raw: bytes | None, base: Options | None = None) -> Options:
    options = base.copy() if base is not None else Options()
    if raw:
        options.update(raw)
    return options


def _checked(key: str, kind: type | tuple[type, ...], value: Any) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON booleans are Python ints; WasmEdge's typed getters reject them for numbers and vice versa.
    ok = any(
        isinstance(value, bool) if k is bool
        else isinstance(value, int) and not isinstance(value, bool) if k is int
        else isinstance(value, int | float) and not isinstance(value, bool) if k is float
        else isinstance(value, k)
        for k in kinds
    )
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise NNError(Errno.INVALID_ARGUMENT, f"metadata key {key!r} must be a JSON {names}")
    if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < 1 << 64:
        raise NNError(Errno.INVALID_ARGUMENT, f"metadata key {key!r} is out of the 64-bit range")
    if key == "logit-bias":
        return _logit_bias(value)
    return float(value) if kinds == (float,) else value


def _logit_bias(value: dict[str, Any]) -> dict[int, float]:
    """{"token id": bias}, as OpenAI's logit_bias (ids as strings, since JSON keys are strings)."""
    bias: dict[int, float] = {}
    for token, amount in value.items():
        numeric = isinstance(amount, int | float) and not isinstance(amount, bool)
        if not (token.isascii() and token.isdigit()) or not numeric:
            raise NNError(Errno.INVALID_ARGUMENT, "metadata key 'logit-bias' maps token ids to numbers")
        bias[int(token)] = float(amount)
    return bias


# key -> (JSON type(s), "sampling" | "options", attribute)
_KEYS: dict[str, tuple[type | tuple[type, ...], str, str]] = {
    "n-predict": (int, "options", "n_predict"),
    "ctx-size": (int, "options", "ctx_size"),
    "batch-size": (int, "options", "batch_size"),
    "ignore-eos": (bool, "options", "ignore_eos"),
    "reverse-prompt": (str, "options", "reverse_prompt"),
    "n-gpu-layers": (int, "options", "n_gpu_layers"),
    "compute-type": (str, "options", "compute_type"),
    "compile": (bool, "options", "compile"),
    "enable-log": (bool, "options", "enable_log"),
    "stream-stdout": (bool, "options", "stream_stdout"),
    "embedding": (bool, "options", "embedding"),
    "chat": (bool, "options", "chat"),
    "complete-utf8": (bool, "options", "complete_utf8"),
    "reserve-n-predict": (bool, "options", "reserve_n_predict"),
    "temp": (float, "sampling", "temp"),
    "top-p": (float, "sampling", "top_p"),
    "top-k": (int, "sampling", "top_k"),
    "min-p": (float, "sampling", "min_p"),
    "repeat-penalty": (float, "sampling", "repeat_penalty"),
    "last-n-penalty": (int, "sampling", "last_n_penalty"),
    "presence-penalty": (float, "sampling", "presence_penalty"),
    "frequency-penalty": (float, "sampling", "frequency_penalty"),
    "seed": (int, "sampling", "seed"),
    "n-probs": (int, "sampling", "n_probs"),
    "grammar": (str, "options", "grammar"),
    "json-schema": (str, "options", "json_schema"),
    # kwasi extensions for the OpenAI surface
    "logprobs": (bool, "sampling", "logprobs"),
    "logit-bias": (dict, "sampling", "logit_bias"),
    "tools": (list, "options", "tools"),
    "tool-choice": ((str, dict), "options", "tool_choice"),
    "parallel-tool-calls": (bool, "options", "parallel_tool_calls"),
}
