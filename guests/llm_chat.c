/* Interactive chat in the shape of WasmEdge's ggml chat examples:
 *
 *   llm_chat NAME [CONFIG_JSON]
 *
 * Each stdin line is a user turn. The guest keeps the conversation as ChatML text (as the examples keep
 * theirs in the guest), streams the answer with compute_single / get_output_single, prints it after
 * "ASSISTANT: ", calls fini_single, and ends at stdin EOF (where the examples would spin).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasi_nn.h"

static char *history;
static size_t history_len;

static void append(const char *s, size_t n) {
  history = realloc(history, history_len + n + 1);
  memcpy(history + history_len, s, n);
  history_len += n;
  history[history_len] = 0;
}
static void append_str(const char *s) { append(s, strlen(s)); }

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s NAME [CONFIG_JSON]\n", argv[0]);
    return 2;
  }
  const char *name = argv[1];
  const char *config = argc > 2 ? argv[2] : "{\"enable-log\":false,\"ctx-size\":1024}";
  uint32_t graph, ctx, err;
  if ((err = nn_load_by_name_with_config(name, (uint32_t)strlen(name), config, (uint32_t)strlen(config), &graph)) ||
      (err = nn_init_execution_context(graph, &ctx))) {
    fprintf(stderr, "load failed: %u\n", err);
    return 1;
  }
  static char line[4096];
  static uint8_t piece[4096];
  int turns = 0;
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!*line) continue;
    append_str("<|im_start|>user\n");
    append_str(line);
    append_str("<|im_end|>\n<|im_start|>assistant\n");
    uint32_t dims[1] = {1};
    nn_tensor input = {dims, 1, NN_U8, (const uint8_t *)history, (uint32_t)history_len};
    if ((err = nn_set_input(ctx, 0, &input))) {
      fprintf(stderr, "set_input failed: %u\n", err);
      return 1;
    }
    printf("ASSISTANT: ");
    uint32_t stop;
    while (!(stop = nn_compute_single(ctx))) {
      uint32_t written = 0;
      if ((err = nn_get_output_single(ctx, 0, piece, sizeof piece, &written))) {
        fprintf(stderr, "get_output_single failed: %u\n", err);
        return 1;
      }
      fwrite(piece, 1, written, stdout);
      append((const char *)piece, written);
      fflush(stdout);
    }
    printf("\n");
    fflush(stdout);
    if (stop != NN_END_OF_SEQUENCE) {
      fprintf(stderr, "compute_single stopped: %u\n", stop);
      return stop == NN_CONTEXT_FULL ? 5 : 1;
    }
    append_str("<|im_end|>\n");
    if ((err = nn_fini_single(ctx))) {
      fprintf(stderr, "fini_single failed: %u\n", err);
      return 1;
    }
    turns++;
  }
  fprintf(stderr, "[turns] %d\n", turns);
  return 0;
}
