"""Backends behind the WASI-NN host: the registry that picks one per graph encoding, TorchScript, and the LLM
backend (`llm/`). Each implements `kwasi_runtime.nn.backend_api`."""
