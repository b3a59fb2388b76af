/* Non-streaming LLM client in the shape of WasmEdge's ggml basic example:
 *
 *   llm_compute NAME PROMPT [CONFIG_JSON [BUFFER_BYTES]]
 *
 * load_by_name_with_config → set_input(0, prompt) → compute → get_output(0) → get_output(1) metadata. The
 * output buffer starts at BUFFER_BYTES (default 24576); on TooLarge the guest grows it to the size the host
 * reported and asks again, so a host that truncates or caps outputs shows up here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm_prompt.h"

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s NAME PROMPT [CONFIG_JSON [BUFFER_BYTES]]\n", argv[0]);
    return 2;
  }
  const char *name = argv[1], *prompt = argv[2];
  const char *config = argc > 3 ? argv[3] : "{\"enable-log\":false,\"ctx-size\":1024}";
  uint32_t size = argc > 4 ? (uint32_t)strtoul(argv[4], NULL, 10) : 24576;
  uint32_t graph, ctx, err, written = 0;
  if ((err = llm_open(name, config, prompt, &graph, &ctx))) return err == NN_MODEL_NOT_FOUND ? 3 : 1;
  uint32_t computed = nn_compute(ctx);
  if (computed && computed != NN_CONTEXT_FULL) {  // text generated before a full context stays readable
    fprintf(stderr, "compute failed: %u\n", computed);
    return 1;
  }
  uint8_t *out = malloc(size + 1);
  while ((err = nn_get_output(ctx, 0, out, size, &written)) == NN_TOO_LARGE) {
    fprintf(stderr, "[too_large] %u bytes needed, buffer %u\n", written, size);
    if (written <= size) return 1;  // TooLarge must report a bigger size
    size = written;
    out = realloc(out, size + 1);
  }
  if (err) {
    fprintf(stderr, "get_output failed: %u\n", err);
    return 1;
  }
  fwrite(out, 1, written, stdout);
  printf("\n");
  char meta[1024];
  if ((err = nn_get_output(ctx, 1, (uint8_t *)meta, sizeof meta - 1, &written))) {
    fprintf(stderr, "get_output(1) failed: %u\n", err);
    return 1;
  }
  meta[written] = 0;
  fprintf(stderr, "[metadata] %s\n", meta);
  if ((err = nn_finalize_execution_context(ctx)) || (err = nn_unload(graph))) {
    fprintf(stderr, "finalize/unload failed: %u\n", err);
    return 1;
  }
  return computed ? 5 : 0;
}
