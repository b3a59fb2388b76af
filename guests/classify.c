/* Tensor classifier: loads a TorchScript model (bytes through `load`, or a preloaded name with
 * -DNAMED through `load_by_name`), feeds an f32 tensor read from a file, prints the top classes.
 *
 *   classify        MODEL.pt  INPUT.f32 DIMS     (DIMS like 1,3,8,8)
 *   classify_named  NAME      INPUT.f32 DIMS
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasi_nn.h"

#define MAX_DIMS 8
#define MAX_CLASSES 4096

static uint8_t *read_file(const char *path, uint32_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, n = 0;
  uint8_t *buf = malloc(cap);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  *len = (uint32_t)n;
  return buf;
}

static int fail(const char *what, uint32_t err) {
  fprintf(stderr, "%s failed: wasi-nn error %u\n", what, err);
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL INPUT.f32 DIMS\n", argv[0]);
    return 2;
  }
  uint32_t graph, ctx, err;
#ifdef NAMED
  err = nn_load_by_name(argv[1], (uint32_t)strlen(argv[1]), &graph);
  if (err) return fail("load_by_name", err);
#else
  nn_builder builder;
  builder.data = read_file(argv[1], &builder.len);
  if (!builder.data) {
    fprintf(stderr, "cannot read model %s\n", argv[1]);
    return 2;
  }
  err = nn_load(&builder, 1, NN_ENC_PYTORCH, NN_TARGET_AUTO, &graph);
  if (err) return fail("load", err);
#endif
  printf("graph %u\n", graph);

  uint32_t dims[MAX_DIMS], ndims = 0;
  for (char *tok = strtok(argv[3], ","); tok && ndims < MAX_DIMS; tok = strtok(NULL, ","))
    dims[ndims++] = (uint32_t)strtoul(tok, NULL, 10);

  nn_tensor input = {dims, ndims, NN_F32, NULL, 0};
  input.data = read_file(argv[2], &input.data_len);
  if (!input.data) {
    fprintf(stderr, "cannot read input %s\n", argv[2]);
    return 2;
  }

  if ((err = nn_init_execution_context(graph, &ctx))) return fail("init_execution_context", err);
  if ((err = nn_set_input(ctx, 0, &input))) return fail("set_input", err);
  if ((err = nn_compute(ctx))) return fail("compute", err);

  static float scores[MAX_CLASSES];
  uint32_t written = 0;
  if ((err = nn_get_output(ctx, 0, (uint8_t *)scores, sizeof scores, &written))) return fail("get_output", err);
  uint32_t n = written / sizeof(float);
  printf("classes %u\n", n);

  /* top 3 by selection: n is small */
  int used[MAX_CLASSES] = {0};
  for (int rank = 0; rank < 3 && rank < (int)n; rank++) {
    int best = -1;
    for (uint32_t i = 0; i < n; i++)
      if (!used[i] && (best < 0 || scores[i] > scores[best])) best = (int)i;
    used[best] = 1;
    printf("top%d %d %.6f\n", rank + 1, best, scores[best]);
  }
  return 0;
}
