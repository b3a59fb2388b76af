"""kwasi-runtime: a WASI-NN host on wasmtime with PyTorch backends."""

__version__ = "0.1.0"
