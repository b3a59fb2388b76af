"""Wasmtime plumbing that knows nothing of WASI-NN: the shared Engine and its epoch ticker, the on-disk cache of
compiled modules, and host functions defined through wasmtime's unchecked C API."""
