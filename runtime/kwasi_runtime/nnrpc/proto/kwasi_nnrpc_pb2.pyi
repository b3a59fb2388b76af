from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class OpenRequest(_message.Message):
    __slots__ = ("client",)
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    client: str
    def __init__(self, client: _Optional[str] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("session_id", "models", "max_window")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOW_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    max_window: int
    def __init__(self, session_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., max_window: _Optional[int] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("builders", "encoding", "target")
    BUILDERS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    builders: _containers.RepeatedScalarFieldContainer[bytes]
    encoding: int
    target: int
    def __init__(self, builders: _Optional[_Iterable[bytes]] = ..., encoding: _Optional[int] = ..., target: _Optional[int] = ...) -> None: ...

class LoadResult(_message.Message):
    __slots__ = ("graph_handle",)
    GRAPH_HANDLE_FIELD_NUMBER: _ClassVar[int]
    graph_handle: int
    def __init__(self, graph_handle: _Optional[int] = ...) -> None: ...

class UnloadRequest(_message.Message):
    __slots__ = ("graph_handle",)
    GRAPH_HANDLE_FIELD_NUMBER: _ClassVar[int]
    graph_handle: int
    def __init__(self, graph_handle: _Optional[int] = ...) -> None: ...

class FinalizeRequest(_message.Message):
    __slots__ = ("ctx_handle",)
    CTX_HANDLE_FIELD_NUMBER: _ClassVar[int]
    ctx_handle: int
    def __init__(self, ctx_handle: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("ctx_handle", "output_index", "window", "consumed", "stop")
    CTX_HANDLE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    ctx_handle: int
    output_index: int
    window: int
    consumed: int
    stop: bool
    def __init__(self, ctx_handle: _Optional[int] = ..., output_index: _Optional[int] = ..., window: _Optional[int] = ..., consumed: _Optional[int] = ..., stop: _Optional[bool] = ...) -> None: ...

class GenerateStep(_message.Message):
    __slots__ = ("errno", "data")
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    errno: int
    data: bytes
    def __init__(self, errno: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
