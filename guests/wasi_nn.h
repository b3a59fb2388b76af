/* The wasi_ephemeral_nn imports, as WasmEdge and Wasmtime define them (all i32, result = errno). */
#ifndef KWASI_WASI_NN_H
#define KWASI_WASI_NN_H

#include <stdint.h>

#define NN_IMPORT(n) __attribute__((import_module("wasi_ephemeral_nn"), import_name(n)))

enum { NN_ENC_PYTORCH = 3, NN_ENC_GGML = 6 };
enum { NN_TARGET_CPU = 0, NN_TARGET_GPU = 1, NN_TARGET_TPU = 2, NN_TARGET_AUTO = 3 };
enum { NN_F16 = 0, NN_F32 = 1, NN_F64 = 2, NN_U8 = 3, NN_I32 = 4, NN_I64 = 5 };
enum {
  NN_OK = 0, NN_INVALID_ARGUMENT = 1, NN_INVALID_ENCODING = 2, NN_MISSING_MEMORY = 3, NN_BUSY = 4,
  NN_RUNTIME_ERROR = 5, NN_UNSUPPORTED = 6, NN_TOO_LARGE = 7, NN_NOT_FOUND = 8,
  NN_END_OF_SEQUENCE = 100, NN_CONTEXT_FULL = 101, NN_PROMPT_TOO_LONG = 102, NN_MODEL_NOT_FOUND = 103
};

typedef struct { const uint8_t *data; uint32_t len; } nn_builder;

/* 20 bytes: the type is one byte at offset 8, padded to 4. */
typedef struct {
  const uint32_t *dims;
  uint32_t dims_len;
  uint8_t type;
  const uint8_t *data;
  uint32_t data_len;
} nn_tensor;

_Static_assert(sizeof(nn_tensor) == 20, "tensor struct is 20 bytes on wasm32");

NN_IMPORT("load") uint32_t nn_load(const nn_builder *b, uint32_t n, uint32_t enc, uint32_t target, uint32_t *graph);
NN_IMPORT("load_by_name") uint32_t nn_load_by_name(const char *name, uint32_t len, uint32_t *graph);
NN_IMPORT("load_by_name_with_config")
uint32_t nn_load_by_name_with_config(const char *name, uint32_t len, const char *cfg, uint32_t cfg_len, uint32_t *graph);
NN_IMPORT("init_execution_context") uint32_t nn_init_execution_context(uint32_t graph, uint32_t *ctx);
NN_IMPORT("set_input") uint32_t nn_set_input(uint32_t ctx, uint32_t index, const nn_tensor *t);
NN_IMPORT("compute") uint32_t nn_compute(uint32_t ctx);
NN_IMPORT("get_output") uint32_t nn_get_output(uint32_t ctx, uint32_t index, uint8_t *buf, uint32_t max, uint32_t *written);
NN_IMPORT("compute_single") uint32_t nn_compute_single(uint32_t ctx);
NN_IMPORT("get_output_single")
uint32_t nn_get_output_single(uint32_t ctx, uint32_t index, uint8_t *buf, uint32_t max, uint32_t *written);
NN_IMPORT("fini_single") uint32_t nn_fini_single(uint32_t ctx);
NN_IMPORT("unload") uint32_t nn_unload(uint32_t graph);
NN_IMPORT("finalize_execution_context") uint32_t nn_finalize_execution_context(uint32_t ctx);

#endif
