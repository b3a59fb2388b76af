"""`kwasi-runtime nn-rpc-server`: named models served over NNRPC to kwasi and WasmEdge clients."""
