/* The opening every LLM guest here shares, as WasmEdge's ggml examples do it: load the named model with a
 * config, make a context, set the prompt (u8, dims [1]). Prints the failing step; returns its errno. */
#ifndef KWASI_LLM_PROMPT_H
#define KWASI_LLM_PROMPT_H

#include <stdio.h>
#include <string.h>

#include "wasi_nn.h"

static uint32_t llm_open(const char *name, const char *config, const char *prompt, uint32_t *graph, uint32_t *ctx) {
  uint32_t err = nn_load_by_name_with_config(name, (uint32_t)strlen(name), config, (uint32_t)strlen(config), graph);
  if (err == NN_MODEL_NOT_FOUND) {
    fprintf(stderr, "Model not found\n");
    return err;
  }
  if (err) {
    fprintf(stderr, "load_by_name_with_config failed: %u\n", err);
    return err;
  }
  if ((err = nn_init_execution_context(*graph, ctx))) {
    fprintf(stderr, "init_execution_context failed: %u\n", err);
    return err;
  }
  uint32_t dims[1] = {1};
  nn_tensor input = {dims, 1, NN_U8, (const uint8_t *)prompt, (uint32_t)strlen(prompt)};
  if ((err = nn_set_input(*ctx, 0, &input))) fprintf(stderr, "set_input failed: %u\n", err);
  return err;
}

#endif
