"""NNRPC: WASI-NN over gRPC, wire-compatible with WasmEdge's `wasi_nn_rpcserver` and `--nn-rpc-uri` client.

`proto` holds the protocol, `wire` what both ends agree on beyond it, `client` the host side of
`kwasi-runtime run/serve --nn-rpc-uri`, and `server` `kwasi-runtime nn-rpc-server` (README.md here).
"""
