"""The NNRPC protocol: `wasi_ephemeral_nn.proto` (WasmEdge's wire) and `kwasi_nnrpc.proto` (kwasi's additions),
with the message modules protoc makes from them (`make protos`; committed, checked by tests/runtime/nnrpc)."""
