/* Filesystem probe for sandbox tests:  fs_probe read|write PATH
 * Exits 0 when the operation succeeds, 1 when the sandbox refuses it (message on stderr). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s read|write PATH\n", argv[0]);
    return 2;
  }
  int writing = strcmp(argv[1], "write") == 0;
  FILE *f = fopen(argv[2], writing ? "wb" : "rb");
  if (!f) {
    fprintf(stderr, "%s %s: %s\n", argv[1], argv[2], strerror(errno));
    return 1;
  }
  if (writing) fputs("written by the guest\n", f);
  fclose(f);
  return 0;
}
