"""WasmEdge GGML semantics of LlmBackend, checked on a scripted model whose greedy output is known exactly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kwasi_runtime.backends.llm import LlmBackend
from kwasi_runtime.backends.llm.backend import LlmContext, LlmGraph, LlmNamedModel
from kwasi_runtime.nn.abi import Errno, ExecutionTarget, NNError, TensorType
from kwasi_runtime.nn.backend_api import Tensor
from kwasi_testing.gguf_models import IM_END_ID, chain, write_scripted_gguf

SCRIPT = "Hi 中文🦀!".encode()  # distinct bytes; 中, 文 and 🦀 span 3-4 byte tokens each
START = ord("Q")
GREEDY = json.dumps({"temp": 0.0}).encode()


def u8(data: bytes) -> Tensor:
    return Tensor((len(data),), TensorType.U8, data)


@pytest.fixture(scope="module")
def scripted_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    successor = chain(START, SCRIPT)
    successor[ord("\n")] = SCRIPT[0]  # chat prompts (ChatML) end with a newline
    path = tmp_path_factory.mktemp("scripted") / "scripted.gguf"
    write_scripted_gguf(path, successor)
    return path


@pytest.fixture(scope="module")
def named(scripted_path: Path) -> LlmNamedModel:
    model = LlmBackend().preload([scripted_path], ExecutionTarget.CPU)
    assert isinstance(model, LlmNamedModel)
    return model


@pytest.fixture
def make_ctx(named: LlmNamedModel) -> Callable[..., LlmContext]:
    def make(prompt: bytes | None = b"Q", **metadata: object) -> LlmContext:
        graph = named.graph(GREEDY)
        ctx = graph.init_execution_context()
        assert isinstance(ctx, LlmContext)
        if metadata:
            ctx.set_input(1, u8(json.dumps(metadata).encode()))
        if prompt is not None:
            ctx.set_input(0, u8(prompt))
        return ctx

    return make


def stream_all(ctx: LlmContext, limit: int = 100) -> tuple[list[bytes], int]:
    pieces: list[bytes] = []
    for _ in range(limit):
        try:
            ctx.compute_single()
        except NNError as exc:
            return pieces, exc.errno
        pieces.append(ctx.get_output_single(0))
    raise AssertionError("stream did not stop")


def meta(ctx: LlmContext) -> dict[str, object]:
    return json.loads(ctx.get_output(1))  # type: ignore[no-any-return]


def test_metadata_json_right_after_set_input(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx(b"Hello")
    doc = meta(ctx)
    assert list(doc) == ["input_tokens", "output_tokens", "llama_build_number", "llama_commit"]
    assert doc["input_tokens"] == 5 and doc["output_tokens"] == 0
    assert json.loads(ctx.get_output_single(1)) == doc


def test_compute_generates_until_end_of_generation(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx()
    ctx.compute()  # EOG is success for compute
    assert ctx.get_output(0) == SCRIPT
    assert meta(ctx)["output_tokens"] == len(SCRIPT) + 1


def test_compute_honours_n_predict_and_reverse_prompt(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx(**{"n-predict": 3})
    ctx.compute()
    assert ctx.get_output(0) == SCRIPT[:3]
    ctx = make_ctx(**{"reverse-prompt": "中"})
    ctx.compute()
    assert ctx.get_output(0) == "Hi 中".encode()


def test_compute_single_streams_raw_bytes_then_end_of_sequence(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx()
    assert ctx.get_output_single(0) == b""  # nothing sampled yet
    pieces, code = stream_all(ctx)
    assert code == Errno.END_OF_SEQUENCE
    assert pieces == [bytes([b]) for b in SCRIPT]  # one raw byte per token, partial UTF-8 included
    partial = [p for p in pieces if not _decodes(p)]
    assert len(partial) == 10  # the bytes of 中, 文 and 🦀
    assert b"".join(pieces).decode() == SCRIPT.decode()
    assert meta(ctx)["output_tokens"] == len(SCRIPT) + 1  # EOG token counted
    assert ctx.get_output(0) == SCRIPT


def test_complete_utf8_option_emits_whole_characters(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx(**{"complete-utf8": True})
    pieces, code = stream_all(ctx)
    assert code == Errno.END_OF_SEQUENCE
    assert all(_decodes(p) for p in pieces)
    assert b"".join(pieces) == SCRIPT
    assert [p.decode() for p in pieces if p][-3:] == ["文", "🦀", "!"]


def test_fini_single_resets_and_generation_restarts(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx()
    for _ in range(4):
        ctx.compute_single()
    ctx.fini_single()
    assert (meta(ctx)["input_tokens"], meta(ctx)["output_tokens"]) == (1, 0)
    assert ctx.get_output(0) == b""
    pieces, code = stream_all(ctx)
    assert code == Errno.END_OF_SEQUENCE and b"".join(pieces) == SCRIPT
    # After END_OF_SEQUENCE the next compute_single starts over from the prompt.
    ctx.compute_single()
    assert ctx.get_output_single(0) == SCRIPT[:1]
    assert meta(ctx)["output_tokens"] == 1


def test_context_full_is_101_and_text_stays_readable(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx(**{"ctx-size": 12, "ignore-eos": True})
    pieces, code = stream_all(ctx)
    assert code == Errno.CONTEXT_FULL
    # 1 prompt token + 11 fed tokens fill 12 positions; the 12th sampled token no longer fits.
    assert len(pieces) == 12 and meta(ctx)["output_tokens"] == 12
    ctx2 = make_ctx(**{"ctx-size": 12, "ignore-eos": True})
    with pytest.raises(NNError) as exc:
        ctx2.compute()
    assert exc.value.errno == Errno.CONTEXT_FULL
    assert ctx2.get_output(0) == b"".join(pieces) == SCRIPT[:12]
    assert meta(ctx2)["output_tokens"] == 12


def test_prompt_longer_than_context_is_102(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx(b"x" * 13, **{"ctx-size": 16})
    for call in (ctx.compute_single, ctx.compute):
        with pytest.raises(NNError) as exc:
            call()
        assert exc.value.errno == Errno.PROMPT_TOO_LONG
    ok = make_ctx(b"x" * 11 + b"Q", **{"ctx-size": 16})
    ok.compute_single()
    assert ok.get_output_single(0) == SCRIPT[:1]


@pytest.mark.parametrize(("n_predict", "reserve", "fits"), [
    (4, True, True),  # 12 prompt tokens + 4 = the whole context of 16
    (5, True, False),
    (5, False, True),  # without reserve-n-predict, n-predict is only where compute stops
    (-1, True, True),  # no n-predict: nothing to reserve
])
def test_reserve_n_predict_is_102_when_prompt_and_n_predict_pass_the_context(
        make_ctx: Callable[..., LlmContext], n_predict: int, reserve: bool, fits: bool) -> None:
    for metadata_first in (True, False):
        keys = {"ctx-size": 16, "n-predict": n_predict, "reserve-n-predict": reserve}
        ctx = make_ctx(b"x" * 11 + b"Q", **keys) if metadata_first else make_ctx(b"x" * 11 + b"Q")
        if not metadata_first:  # metadata after the prompt counts the same
            ctx.set_input(1, u8(json.dumps(keys).encode()))
        if fits:
            ctx.compute_single()
            assert ctx.get_output_single(0) == SCRIPT[:1]
        else:
            with pytest.raises(NNError) as exc:
                ctx.compute_single()
            assert exc.value.errno == Errno.PROMPT_TOO_LONG
            assert "plus 5 to generate" in str(exc.value)


def test_missing_model_file_is_103_at_load(tmp_path: Path) -> None:
    named = LlmBackend().preload([tmp_path / "absent.gguf"], ExecutionTarget.AUTO)  # lazy: no error yet
    with pytest.raises(NNError) as exc:
        named.graph(None)
    assert exc.value.errno == Errno.MODEL_NOT_FOUND


@pytest.mark.parametrize("config", [b'{"temp": "hot"}', b'{"n-predict": 1.5}', b'{"ignore-eos": 1}',
                                    b'{"reverse-prompt": 5}', b'{"ctx-size": true}', b"[1, 2]"])
def test_wrong_json_type_is_invalid_argument(named: LlmNamedModel, make_ctx: Callable[..., LlmContext],
                                             config: bytes) -> None:
    named._live = None
    with pytest.raises(NNError) as exc:
        named.graph(config)
    assert exc.value.errno == Errno.INVALID_ARGUMENT
    ctx = make_ctx()
    with pytest.raises(NNError) as exc:
        ctx.set_input(1, u8(config))
    assert exc.value.errno == Errno.INVALID_ARGUMENT
    ctx.compute()  # a rejected document changes nothing
    assert ctx.get_output(0) == SCRIPT


@pytest.mark.parametrize("config", [b"{temp", b"not json", b'{"temp": 0.5', b"\xff\xfe"])
def test_unparsable_json_is_invalid_encoding(named: LlmNamedModel, make_ctx: Callable[..., LlmContext],
                                             config: bytes) -> None:
    named._live = None
    with pytest.raises(NNError) as exc:
        named.graph(config)
    assert exc.value.errno == Errno.INVALID_ENCODING
    with pytest.raises(NNError) as exc:
        make_ctx().set_input(1, u8(config))
    assert exc.value.errno == Errno.INVALID_ENCODING


def test_unknown_keys_are_ignored(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx(**{"llama3": False, "include_usage": True, "n-predict": 2, "mmproj": ""})
    ctx.compute()
    assert ctx.get_output(0) == SCRIPT[:2]


def test_compute_without_prompt_is_invalid_argument(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx(prompt=None)
    for call in (ctx.compute, ctx.compute_single):
        with pytest.raises(NNError) as exc:
            call()
        assert exc.value.errno == Errno.INVALID_ARGUMENT


def test_live_graph_is_cached_and_rebuilt_after_unload(named: LlmNamedModel) -> None:
    named._live = None
    first = named.graph(GREEDY)
    assert named.graph(b'{"temp": "ignored, not even parsed"}') is first
    ctx = first.init_execution_context()
    first.close()
    second = named.graph(GREEDY)
    assert second is not first
    assert isinstance(first, LlmGraph) and isinstance(second, LlmGraph)
    assert first.loaded is second.loaded  # weights are shared, not reloaded
    # The old context drains after unload; the new graph serves too.
    for c in (ctx, second.init_execution_context()):
        c.set_input(0, u8(b"Q"))
        c.compute()
        assert c.get_output(0) == SCRIPT
    second.close()


def test_chat_mode_renders_messages_with_model_template(make_ctx: Callable[..., LlmContext]) -> None:
    messages = [{"role": "user", "content": "hey"}]
    ctx = make_ctx(json.dumps(messages).encode(), chat=True)
    rendered = "<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\n"
    specials = ["<|im_start|>", "<|im_end|>", "<|im_start|>"]  # one token each; every other byte one token
    assert meta(ctx)["input_tokens"] == len(rendered.encode()) - sum(map(len, specials)) + len(specials)
    ctx.compute()
    assert ctx.get_output(0) == SCRIPT
    with pytest.raises(NNError) as exc:
        ctx.set_input(0, u8(b'{"role": "user"}'))
    assert exc.value.errno == Errno.INVALID_ARGUMENT


def test_embedding_mode(make_ctx: Callable[..., LlmContext]) -> None:
    ctx = make_ctx(b"abc", embedding=True)
    ctx.compute()
    doc = json.loads(ctx.get_output(0))
    assert set(doc) == {"n_embedding", "embedding"}
    vector = doc["embedding"]
    assert doc["n_embedding"] == len(vector) > 0
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-4  # normalised
    # The scripted model's final hidden state is a scaled one-hot of each token: mean pooling mixes a, b, c.
    assert [i for i, v in enumerate(vector) if v > 1e-3] == [ord("a"), ord("b"), ord("c")]
    long = make_ctx(b"y" * 40, embedding=True, **{"batch-size": 32})
    with pytest.raises(NNError) as exc:
        long.compute()
    assert exc.value.errno == Errno.PROMPT_TOO_LONG


def test_stream_stdout_prints_generated_text(make_ctx: Callable[..., LlmContext],
                                             capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    ctx = make_ctx(**{"stream-stdout": True})
    ctx.compute()
    assert capfdbinary.readouterr().out == SCRIPT


def test_plain_load_from_bytes(scripted_path: Path) -> None:
    graph = LlmBackend().load([scripted_path.read_bytes(), GREEDY], ExecutionTarget.CPU)
    ctx = graph.init_execution_context()
    ctx.set_input(0, u8(b"Q"))
    ctx.compute()
    assert ctx.get_output(0) == SCRIPT
    with pytest.raises(NNError) as exc:
        LlmBackend().load([b"not a gguf"], ExecutionTarget.CPU)
    assert exc.value.errno == Errno.INVALID_ENCODING
    # A guest may not name host files through WasmEdge's `preload:` marker.
    with pytest.raises(NNError) as exc:
        LlmBackend().load([b"preload:" + str(scripted_path).encode(), GREEDY], ExecutionTarget.CPU)
    assert exc.value.errno == Errno.INVALID_ENCODING


def test_eog_token_is_recognised(named: LlmNamedModel) -> None:
    named._live = None
    graph = named.graph(GREEDY)
    assert isinstance(graph, LlmGraph)
    assert IM_END_ID in graph.loaded.tokenizer.eog_ids


def _decodes(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_contexts_of_one_graph_are_independent(named: LlmNamedModel) -> None:
    named._live = None
    graph = named.graph(GREEDY)
    a, b = graph.init_execution_context(), graph.init_execution_context()
    a.set_input(0, u8(b"Q"))
    b.set_input(1, u8(b'{"n-predict": 2}'))  # metadata sent to one context leaves the other alone
    b.set_input(0, u8(b"xxQ"))
    got_a, got_b = [], []
    for _ in range(5):  # interleaved steps share the weights but not the caches
        a.compute_single()
        b.compute_single()
        got_a.append(a.get_output_single(0))
        got_b.append(b.get_output_single(0))
    assert got_a == got_b == [bytes([c]) for c in SCRIPT[:5]]
    a.compute()
    b.compute()
    assert (a.get_output(0), b.get_output(0)) == (SCRIPT, SCRIPT[:2])
