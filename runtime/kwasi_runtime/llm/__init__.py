"""LLM backend: Llama-family models (Llama 2/3, Mistral, Qwen2, SmolLM2) from GGUF or HF directories,
served with WasmEdge GGML semantics (`LlmBackend`) or directly from Python (`LlmEngine`)."""

from kwasi_runtime.llm.backend import LlmBackend
from kwasi_runtime.llm.checkpoint import is_llm_path
from kwasi_runtime.llm.engine import LlmEngine, LoadedModel, Stream
from kwasi_runtime.llm.sampling import SamplingParams

__all__ = ["LlmBackend", "LlmEngine", "LoadedModel", "SamplingParams", "Stream", "is_llm_path"]
