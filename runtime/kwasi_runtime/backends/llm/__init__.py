"""LLM backend: Llama-family models (Llama 2/3, Mistral, Qwen2, SmolLM2) from GGUF or HF directories,
served with WasmEdge GGML semantics (`LlmBackend`) or directly from Python (`LlmGenerator`)."""

from kwasi_runtime.backends.llm.backend import LlmBackend
from kwasi_runtime.backends.llm.checkpoint import is_llm_path
from kwasi_runtime.backends.llm.generation import LlmGenerator, LoadedModel, Stream
from kwasi_runtime.backends.llm.sampling import SamplingParams

__all__ = ["LlmBackend", "LlmGenerator", "LoadedModel", "SamplingParams", "Stream", "is_llm_path"]
