/* Boundary benchmark guest: drives the host with the least work possible per call.
 *
 *   bench_boundary calls N    N x fini_single on a context (one guest->host call each)
 *   bench_boundary stream N   compute_single + get_output_single until the backend ends the sequence
 *
 * Uses the named model "noop"; prints the number of tokens received.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasi_nn.h"

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s calls|stream N\n", argv[0]);
    return 2;
  }
  long n = strtol(argv[2], NULL, 10);
  uint32_t graph, ctx, err;
  if ((err = nn_load_by_name("noop", 4, &graph)) || (err = nn_init_execution_context(graph, &ctx))) {
    fprintf(stderr, "setup failed: %u\n", err);
    return 1;
  }
  if (strcmp(argv[1], "calls") == 0) {
    for (long i = 0; i < n; i++) nn_fini_single(ctx);
    printf("%ld\n", n);
    return 0;
  }
  static uint8_t buf[256];
  long tokens = 0;
  while (nn_compute_single(ctx) == NN_OK) {
    uint32_t written;
    if ((err = nn_get_output_single(ctx, 0, buf, sizeof buf, &written))) return 1;
    tokens++;
  }
  printf("%ld\n", tokens);
  return 0;
}
