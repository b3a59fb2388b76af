"""TorchScript backend (graph encoding pytorch=3): one builder holding a TorchScript archive."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError, TensorType
from kwasi_runtime.nn.backend_api import Backend, ExecutionContext, Graph, NamedModel, Tensor

log = logging.getLogger(__name__)

_DTYPES: dict[TensorType, torch.dtype] = {
    TensorType.F16: torch.float16,
    TensorType.BF16: torch.bfloat16,
    TensorType.F32: torch.float32,
    TensorType.F64: torch.float64,
    TensorType.U8: torch.uint8,
    TensorType.I32: torch.int32,
    TensorType.I64: torch.int64,
}

# Guests that `load` the same archive on every run (the common case behind a server) reuse the parsed module.
_LOAD_CACHE_SIZE = 4


def resolve_device(target: ExecutionTarget) -> torch.device:
    if target is ExecutionTarget.CPU:
        return torch.device("cpu")
    if target is ExecutionTarget.GPU:
        if not torch.cuda.is_available():
            log.error("target gpu requested but CUDA is not available")
            raise NNError(Errno.INVALID_ARGUMENT, "target gpu requested but CUDA is not available")
        return torch.device("cuda")
    if target is ExecutionTarget.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise NNError(Errno.INVALID_ARGUMENT, f"target {target.name.lower()} is not supported by the torch backend")


class TorchScriptContext(ExecutionContext):
    def __init__(self, graph: TorchScriptGraph) -> None:
        self._graph = graph
        self._inputs: dict[int, torch.Tensor] = {}
        self._outputs: list[torch.Tensor] | None = None

    def set_input(self, index: int, tensor: Tensor) -> None:
        dtype = _DTYPES[tensor.type]
        count = math.prod(tensor.dims)
        if count * tensor.type.itemsize != len(tensor.data):
            raise NNError(
                Errno.INVALID_ARGUMENT,
                f"input {index}: dims {list(tensor.dims)} of {tensor.type.value} need "
                f"{count * tensor.type.itemsize} bytes, got {len(tensor.data)}",
            )
        if count == 0:
            value = torch.empty(tensor.dims, dtype=dtype)
        else:
            # bytearray: frombuffer needs a writable buffer to avoid a warning; this is the one copy.
            value = torch.frombuffer(bytearray(tensor.data), dtype=dtype).reshape(tensor.dims)
        self._inputs[index] = value.to(self._graph.device)

    def compute(self) -> None:
        if not self._inputs:
            raise NNError(Errno.INVALID_ARGUMENT, "compute before any set_input")
        count = max(self._inputs) + 1
        missing = [i for i in range(count) if i not in self._inputs]
        if missing:
            raise NNError(Errno.INVALID_ARGUMENT, f"inputs {missing} of forward() were not set")
        args = [self._inputs[i] for i in range(count)]
        try:
            with torch.inference_mode():
                result = self._graph.module(*args)
        except Exception as e:  # TorchScript raises RuntimeError subclasses for shape/type errors
            raise NNError(Errno.RUNTIME_ERROR, f"forward() failed: {_first_line(e)}") from None
        self._outputs = _flatten_outputs(result)

    def get_output(self, index: int) -> bytes:
        if self._outputs is None:
            raise NNError(Errno.INVALID_ARGUMENT, "get_output before compute")
        if not 0 <= index < len(self._outputs):
            raise NNError(Errno.INVALID_ARGUMENT, f"output {index} does not exist ({len(self._outputs)} outputs)")
        out = self._outputs[index]
        if self._graph.output_f32:
            out = out.to(torch.float32)
        return _tensor_bytes(out)

    def close(self) -> None:
        self._inputs.clear()
        self._outputs = None


class TorchScriptGraph(Graph):
    def __init__(self, module: torch.jit.ScriptModule, device: torch.device, output_f32: bool) -> None:
        self.module = module
        self.device = device
        self.output_f32 = output_f32

    def init_execution_context(self) -> ExecutionContext:
        return TorchScriptContext(self)


class TorchScriptNamedModel(NamedModel):
    def __init__(self, module: torch.jit.ScriptModule, device: torch.device, output_f32: bool) -> None:
        self._module = module
        self._device = device
        self._output_f32 = output_f32

    def graph(self, config: bytes | None) -> Graph:
        output_f32 = self._output_f32
        if config:
            output_f32 = _parse_config(config, output_f32)
        return TorchScriptGraph(self._module, self._device, output_f32)


class TorchScriptBackend(Backend):
    def __init__(self, output_f32: bool = False) -> None:
        self.output_f32 = output_f32
        self._cache: OrderedDict[tuple[str, str], torch.jit.ScriptModule] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, builders: Sequence[bytes], target: ExecutionTarget) -> Graph:
        if len(builders) != 1:
            raise NNError(Errno.INVALID_ARGUMENT, f"the torch backend takes 1 builder, got {len(builders)}")
        device = resolve_device(target)
        key = (hashlib.sha256(builders[0]).hexdigest(), str(device))
        with self._lock:
            module = self._cache.get(key)
            if module is not None:
                self._cache.move_to_end(key)
        if module is None:
            try:
                module = _load_module(builders[0], device)
            except Exception as e:
                raise NNError(Errno.INVALID_ARGUMENT, f"not a TorchScript archive: {_first_line(e)}") from None
            with self._lock:
                self._cache[key] = module
                while len(self._cache) > _LOAD_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return TorchScriptGraph(module, device, self.output_f32)

    def preload(self, paths: Sequence[Path], target: ExecutionTarget) -> NamedModel:
        if len(paths) != 1:
            raise ValueError(f"the torch backend takes 1 model file, got {len(paths)}")
        path = paths[0]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read model file {str(path)!r}: {e.strerror}") from None
        try:
            device = resolve_device(target)
        except NNError as e:
            raise ValueError(str(e)) from None
        try:
            module = _load_module(data, device)
        except Exception as e:
            raise ValueError(f"{str(path)!r} is not a TorchScript archive: {_first_line(e)}") from None
        return TorchScriptNamedModel(module, device, self.output_f32)


def _load_module(data: bytes, device: torch.device) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch 2.12 marks TorchScript deprecated; it is still the archive format WASI-NN guests ship.
        warnings.simplefilter("ignore", DeprecationWarning)
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            io.BytesIO(data), map_location=device
        )
    module.eval()
    return module


def _parse_config(config: bytes, default: bool) -> bool:
    try:
        parsed = json.loads(config)
    except ValueError:
        raise NNError(Errno.INVALID_ENCODING, "graph config is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise NNError(Errno.INVALID_ARGUMENT, "graph config must be a JSON object")
    value = parsed.get("output-f32", default)
    if not isinstance(value, bool):
        raise NNError(Errno.INVALID_ARGUMENT, "graph config key output-f32 must be a boolean")
    return value


def _flatten_outputs(result: object) -> list[torch.Tensor]:
    items = list(result) if isinstance(result, (tuple, list)) else [result]
    if not all(isinstance(t, torch.Tensor) for t in items):
        kinds = sorted({type(t).__name__ for t in items})
        raise NNError(Errno.RUNTIME_ERROR, f"forward() returned {kinds}; expected tensors")
    return [t for t in items if isinstance(t, torch.Tensor)]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.dtype is torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().tobytes()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
