/* WAGI test guest for `kwasi-runtime serve`: behaviour picked by the query string.
 *
 *   (none)            CGI prelude, then the request line, every environment variable and the body
 *   mode=status       Status: 418 with a body
 *   mode=plain        no prelude at all (a plain 200 text body)
 *   mode=stream&n=N&ms=M   N lines, one write each, M ms apart
 *   mode=trap         unreachable, before any output
 *   mode=spin         never returns (the deadline must stop it)
 *   mode=exit         exit code 3 with no output
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern char **environ;

static long param(const char *query, const char *key, long fallback) {
  size_t k = strlen(key);
  for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
    if (!strncmp(p, key, k) && p[k] == '=') return strtol(p + k + 1, NULL, 10);
  return fallback;
}

static int mode_is(const char *query, const char *mode) {
  const char *at = strstr(query, "mode=");
  size_t n = strlen(mode);
  return at && !strncmp(at + 5, mode, n) && (at[5 + n] == 0 || at[5 + n] == '&');
}

int main(void) {
  const char *query = getenv("QUERY_STRING");
  if (!query) query = "";
  if (mode_is(query, "trap")) __builtin_trap();
  if (mode_is(query, "spin")) {
    for (volatile unsigned long i = 0;; i++) {
    }
  }
  if (mode_is(query, "exit")) return 3;
  if (mode_is(query, "plain")) {
    printf("plain body\n");
    return 0;
  }
  if (mode_is(query, "status")) {
    printf("Status: 418 I'm a teapot\nContent-Type: text/plain\n\nteapot\n");
    return 0;
  }
  if (mode_is(query, "stream")) {
    long n = param(query, "n", 3), ms = param(query, "ms", 0);
    printf("Content-Type: text/plain\n\n");
    fflush(stdout);
    for (long i = 0; i < n; i++) {
      if (ms > 0) {
        struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&t, NULL);
      }
      printf("chunk %ld\n", i);
      fflush(stdout);
    }
    return 0;
  }
  printf("Content-Type: text/plain\nX-Guest: wagi_echo\n\n");
  printf("%s %s?%s\n", getenv("REQUEST_METHOD"), getenv("PATH_INFO"), query);
  for (char **e = environ; *e; e++) printf("%s\n", *e);
  printf("body:");
  char buf[4096];
  for (size_t got; (got = fread(buf, 1, sizeof buf, stdin)) > 0;) fwrite(buf, 1, got, stdout);
  return 0;
}
