"""The WASI-NN host: ABI numbers, the interface backends implement, guest-memory decoding, per-run handle tables,
the named-model table, and the `wasi_ephemeral_nn` host functions that tie them together."""
