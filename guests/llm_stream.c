/* Streaming LLM client in the shape of WasmEdge's llama-stream example:
 *
 *   llm_stream NAME PROMPT [CONFIG_JSON]
 *
 * load_by_name_with_config → set_input(0, prompt) → get_output(1) metadata → compute_single loop with
 * get_output_single → get_output(1) → fini_single. Tokens go to stdout as they arrive.
 */
#include <stdio.h>
#include <string.h>

#include "llm_prompt.h"

static uint8_t buf[24576];

static int print_metadata(uint32_t ctx, const char *when) {
  uint32_t written = 0, err = nn_get_output(ctx, 1, buf, sizeof buf - 1, &written);
  if (err) {
    fprintf(stderr, "get_output(1) %s failed: %u\n", when, err);
    return 1;
  }
  buf[written] = 0;
  fprintf(stderr, "[metadata %s] %s\n", when, (const char *)buf);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s NAME PROMPT [CONFIG_JSON]\n", argv[0]);
    return 2;
  }
  const char *name = argv[1], *prompt = argv[2];
  const char *config = argc > 3 ? argv[3] : "{\"enable-log\":false,\"ctx-size\":1024}";
  uint32_t graph, ctx, err;
  if ((err = llm_open(name, config, prompt, &graph, &ctx))) return err == NN_MODEL_NOT_FOUND ? 3 : 1;
  if (print_metadata(ctx, "before")) return 1;

  uint32_t tokens = 0, stop;
  for (;;) {
    stop = nn_compute_single(ctx);
    if (stop == NN_END_OF_SEQUENCE || stop == NN_CONTEXT_FULL || stop == NN_PROMPT_TOO_LONG) break;
    if (stop) {
      fprintf(stderr, "compute_single failed: %u\n", stop);
      return 1;
    }
    uint32_t written = 0;
    if ((err = nn_get_output_single(ctx, 0, buf, sizeof buf, &written))) {
      fprintf(stderr, "get_output_single failed: %u\n", err);
      return 1;
    }
    fwrite(buf, 1, written, stdout);
    fflush(stdout);
    tokens++;
  }
  printf("\n");
  fflush(stdout);
  fprintf(stderr, "[stop] code %u after %u tokens\n", stop, tokens);
  if (stop == NN_PROMPT_TOO_LONG) return 4;
  if (print_metadata(ctx, "after")) return 1;
  if ((err = nn_fini_single(ctx))) {
    fprintf(stderr, "fini_single failed: %u\n", err);
    return 1;
  }
  return stop == NN_CONTEXT_FULL ? 5 : 0;
}
