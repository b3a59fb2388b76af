"""Numbers of the `wasi_ephemeral_nn` ABI: errnos, encodings, targets, tensor types.

Values follow the witx spec (WebAssembly/wasi-nn:wasi-nn.witx @71320d9) and WasmEdge's extensions
(WasmEdge/WasmEdge:plugins/wasi_nn/wasinntypes.h and types.h).
"""

from __future__ import annotations

import enum

IMPORT_MODULE = "wasi_ephemeral_nn"
TENSOR_STRUCT_SIZE = 20
BUILDER_ENTRY_SIZE = 8


class Errno(enum.IntEnum):
    SUCCESS = 0
    INVALID_ARGUMENT = 1
    INVALID_ENCODING = 2
    MISSING_MEMORY = 3
    BUSY = 4
    RUNTIME_ERROR = 5
    UNSUPPORTED_OPERATION = 6
    TOO_LARGE = 7
    NOT_FOUND = 8
    # WasmEdge GGML extensions.
    END_OF_SEQUENCE = 100
    CONTEXT_FULL = 101
    PROMPT_TOO_LONG = 102
    MODEL_NOT_FOUND = 103


class NNError(Exception):
    """A failure a host function reports to the guest as an errno (never as a trap)."""

    def __init__(self, errno: Errno, message: str = "") -> None:
        super().__init__(message or errno.name.lower())
        self.errno = errno


class GraphEncoding(enum.IntEnum):
    """witx / WasmEdge numbering (autodetect=5, ggml=6), not the WIT one."""

    OPENVINO = 0
    ONNX = 1
    TENSORFLOW = 2
    PYTORCH = 3
    TENSORFLOWLITE = 4
    AUTODETECT = 5
    GGML = 6
    NEURALSPEED = 7
    BURN = 8
    WHISPER = 9
    MLX = 10
    PIPER = 11
    CHATTTS = 12
    OPENVINOGENAI = 13
    BITNET = 14

    @classmethod
    def parse(cls, name: str) -> GraphEncoding:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            known = ", ".join(e.name.lower() for e in cls)
            raise ValueError(f"unknown graph encoding {name!r} (known: {known})") from None


class ExecutionTarget(enum.IntEnum):
    CPU = 0
    GPU = 1
    TPU = 2
    AUTO = 3  # WasmEdge extension

    @classmethod
    def parse(cls, name: str) -> ExecutionTarget:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown execution target {name!r} (known: cpu, gpu, tpu, auto)"
            ) from None


class TensorType(enum.Enum):
    """Element types, independent of any wire numbering."""

    F16 = "f16"
    BF16 = "bf16"
    F32 = "f32"
    F64 = "f64"
    U8 = "u8"
    I32 = "i32"
    I64 = "i64"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]


_ITEMSIZE = {
    TensorType.F16: 2,
    TensorType.BF16: 2,
    TensorType.F32: 4,
    TensorType.F64: 8,
    TensorType.U8: 1,
    TensorType.I32: 4,
    TensorType.I64: 8,
}


class TensorTypeNumbering(enum.Enum):
    """Guests disagree on the number of each tensor type.

    The witx spec renumbered them in WebAssembly/wasi-nn commit 747d8df (2023-08-23, adding f64/i64 and moving u8,
    i32); WasmEdge followed in 0.15.0 and the wasi-nn / wasmedge-wasi-nn crates in 0.6.0 / 0.7.0. The WIT world
    (wit/wasi-nn.wit) has its own order and is the only one with bf16.
    """

    WITX = "witx"  # spec witx since 747d8df, WasmEdge >= 0.15, current Rust crates
    LEGACY = "legacy"  # WasmEdge <= 0.14, wasi-nn crate <= 0.5
    WIT = "wit"  # component-model order, the only one with bf16

    def decode(self, raw: int) -> TensorType | None:
        return _NUMBERINGS[self].get(raw)


_NUMBERINGS: dict[TensorTypeNumbering, dict[int, TensorType]] = {
    TensorTypeNumbering.WITX: {
        0: TensorType.F16,
        1: TensorType.F32,
        2: TensorType.F64,
        3: TensorType.U8,
        4: TensorType.I32,
        5: TensorType.I64,
    },
    TensorTypeNumbering.LEGACY: {
        0: TensorType.F16,
        1: TensorType.F32,
        2: TensorType.U8,
        3: TensorType.I32,
    },
    TensorTypeNumbering.WIT: {
        0: TensorType.F16,
        1: TensorType.F32,
        2: TensorType.F64,
        3: TensorType.BF16,
        4: TensorType.U8,
        5: TensorType.I32,
        6: TensorType.I64,
    },
}
