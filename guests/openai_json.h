/* Byte buffers and the little JSON the OpenAI guest needs: writing strings, base64 float arrays, and reading
 * two kinds of value from the flat metadata JSON the backend writes. No JSON parser: none is needed. */
#ifndef KWASI_OPENAI_JSON_H
#define KWASI_OPENAI_JSON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char *p;
  size_t n, cap;
} buf_t;

static void put(buf_t *b, const void *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) abort();
    b->p = p, b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}
static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }
static void putu(buf_t *b, unsigned long v) {
  char t[24];
  snprintf(t, sizeof t, "%lu", v);
  puts_(b, t);
}

/* Length of the valid UTF-8 sequence at s (n bytes left): 0 if invalid, -1 if cut short by the end. */
static int utf8_len(const uint8_t *s, size_t n) {
  uint8_t c = s[0];
  int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 && c >= 0xC2 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 && c <= 0xF4 ? 4 : 0;
  for (int i = 1; i < len; i++) {
    if ((size_t)i >= n) return -1;
    if ((s[i] & 0xC0) != 0x80) return 0;
  }
  return len;
}

/* A JSON string; invalid UTF-8 becomes U+FFFD so the document always parses. */
static void put_json_str(buf_t *b, const uint8_t *s, size_t n) {
  put(b, "\"", 1);
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    int len = utf8_len(s + i, n - i);
    if (len <= 0) {
      puts_(b, "\\ufffd");
      i++;
    } else if (c == '"' || c == '\\') {
      put(b, "\\", 1), put(b, &c, 1), i++;
    } else if (c < 0x20) {
      char t[8];
      snprintf(t, sizeof t, "\\u%04x", c);
      puts_(b, t), i++;
    } else {
      put(b, s + i, (size_t)len), i += (size_t)len;
    }
  }
  put(b, "\"", 1);
}

static unsigned long json_count(const char *doc, const char *key) {
  const char *at = strstr(doc, key);
  if (!at) return 0;
  at += strlen(key);
  while (*at == ' ' || *at == ':' || *at == '"') at++;
  return strtoul(at, NULL, 10);
}

/* `"key": "value"` of a flat JSON object written by the backend: the value's bytes (no escapes expected). */
static size_t json_text(const char *doc, const char *key, const char **value) {
  const char *at = strstr(doc, key);
  if (!at) return 0;
  at += strlen(key);
  while (*at == ' ' || *at == ':') at++;
  if (*at != '"') return 0;
  const char *end = strchr(++at, '"');
  *value = at;
  return end ? (size_t)(end - at) : 0;
}

static unsigned long utf8_chars(const char *s, size_t n) {
  unsigned long c = 0;
  for (size_t i = 0; i < n; i++) c += ((uint8_t)s[i] & 0xC0) != 0x80;
  return c;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* A JSON array of numbers as OpenAI's base64 of little-endian float32 (wasm32 is little-endian). */
static void put_base64_floats(buf_t *b, const char *arr, size_t n) {
  buf_t raw = {0};
  const char *p = arr + 1, *end = arr + n;
  while (p < end) {
    char *next;
    float f = strtof(p, &next);
    if (next == p) break;
    put(&raw, &f, 4);  // wasm32 is little-endian, as OpenAI's base64 float32 is
    p = next;
    while (p < end && (*p == ',' || *p == ' ')) p++;
  }
  put(b, "\"", 1);
  for (size_t i = 0; i < raw.n; i += 3) {
    uint32_t v = (uint8_t)raw.p[i] << 16;
    if (i + 1 < raw.n) v |= (uint8_t)raw.p[i + 1] << 8;
    if (i + 2 < raw.n) v |= (uint8_t)raw.p[i + 2];
    char q[4] = {B64[v >> 18 & 63], B64[v >> 12 & 63], i + 1 < raw.n ? B64[v >> 6 & 63] : '=',
                 i + 2 < raw.n ? B64[v & 63] : '='};
    put(b, q, 4);
  }
  put(b, "\"", 1);
  free(raw.p);
}

#endif
