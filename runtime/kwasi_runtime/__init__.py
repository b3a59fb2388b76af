"""kwasi-runtime: a WASI-NN host on wasmtime with PyTorch backends.

The embedding API: build an `NNHost` over `NamedModels` (and `Backends` for guests' plain `load`), compile a
guest once into a `Sandbox`, and `run` it as often as needed, each run in a fresh instance. The module map by
layer is in runtime/README.md.
"""

from kwasi_runtime.backends.registry import BackendOptions, Backends
from kwasi_runtime.nn.abi import Errno, ExecutionTarget, GraphEncoding, NNError, TensorType, TensorTypeNumbering
from kwasi_runtime.nn.backend_api import Backend, ExecutionContext, Graph, NamedModel, Tensor
from kwasi_runtime.nn.host import HostOptions, NNHost
from kwasi_runtime.nn.models import NamedModels
from kwasi_runtime.sandbox import GuestInstance, Limits, Preopen, RunResult, Sandbox, WasiSetup

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendOptions",
    "Backends",
    "Errno",
    "ExecutionContext",
    "ExecutionTarget",
    "Graph",
    "GraphEncoding",
    "GuestInstance",
    "HostOptions",
    "Limits",
    "NNError",
    "NNHost",
    "NamedModel",
    "NamedModels",
    "Preopen",
    "RunResult",
    "Sandbox",
    "Tensor",
    "TensorType",
    "TensorTypeNumbering",
    "WasiSetup",
    "__version__",
]
