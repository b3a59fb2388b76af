/* The default OpenAI chat guest of `kwasi-runtime serve` (POST /v1/chat/completions and /v1/completions).
 *
 * The host has already validated the request (runtime/kwasi_runtime/serve/openai.py describes the contract):
 * stdin is the prompt (a JSON list of messages in chat mode), KWASI_* variables carry the rest. This guest
 * runs the generation through WASI-NN (load_by_name, set_input(1) metadata, set_input(0) prompt,
 * compute_single per token, get_output(1) usage) and writes the HTTP response: a CGI prelude, then either
 * SSE chunks as tokens arrive or one JSON object at the end. It applies max_tokens and stop sequences itself,
 * holding back text that may be the start of a stop sequence or of a UTF-8 character. The finish reason goes
 * to stderr as `kwasi-finish-reason: R` for the host's metrics. No JSON parsing: JSON is only written here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasi_nn.h"

#define MAX_STOPS 4

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

static const char *env(const char *k, const char *d) {
  const char *v = getenv(k);
  return v ? v : d;
}

static int chat, streaming, include_usage;
static const char *id, *created, *model_json;
static const char *stops[MAX_STOPS];
static size_t nstops;
static buf_t pending, content;  // held-back text; the whole answer when not streaming

static void emit_out(buf_t *b) {
  fwrite(b->p, 1, b->n, stdout);
  fflush(stdout);  // one write per event: the host streams each as it comes
  b->n = 0;
}

static void object_head(buf_t *b, int chunk) {
  puts_(b, "{\"id\":\"");
  puts_(b, id);
  puts_(b, "\",\"object\":\"");
  puts_(b, chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion");
  puts_(b, "\",\"created\":");
  puts_(b, created);
  puts_(b, ",\"model\":");
  puts_(b, model_json);
}

/* One SSE event with a delta (chat) or text (completions); finish is NULL while streaming. */
static void sse_chunk(const char *role, const uint8_t *text, size_t n, const char *finish) {
  buf_t b = {0};
  puts_(&b, "data: ");
  object_head(&b, 1);
  puts_(&b, ",\"choices\":[{\"index\":0,");
  if (chat) {
    puts_(&b, "\"delta\":{");
    if (role) puts_(&b, "\"role\":\""), puts_(&b, role), puts_(&b, "\",");
    if (text) puts_(&b, "\"content\":"), put_json_str(&b, text, n);
    else if (role) b.n--, b.p[b.n] = 0;  // drop the trailing comma
    puts_(&b, "},\"logprobs\":null,\"finish_reason\":");
  } else {
    puts_(&b, "\"text\":");
    put_json_str(&b, text ? text : (const uint8_t *)"", text ? n : 0);
    puts_(&b, ",\"logprobs\":null,\"finish_reason\":");
  }
  if (finish) puts_(&b, "\""), puts_(&b, finish), puts_(&b, "\"");
  else puts_(&b, "null");
  puts_(&b, "}]}\n\n");
  emit_out(&b);
  free(b.p);
}

static void emit_text(const uint8_t *s, size_t n) {
  if (!n) return;
  if (streaming) sse_chunk(NULL, s, n, NULL);
  else put(&content, s, n);
}

static void usage_json(buf_t *b, unsigned long prompt, unsigned long completion) {
  puts_(b, "\"usage\":{\"prompt_tokens\":");
  putu(b, prompt);
  puts_(b, ",\"completion_tokens\":");
  putu(b, completion);
  puts_(b, ",\"total_tokens\":");
  putu(b, prompt + completion);
  puts_(b, "}");
}

static int fail(int status, const char *type, const char *code, const char *message) {
  buf_t b = {0};
  puts_(&b, "Status: ");
  putu(&b, (unsigned long)status);
  puts_(&b, "\nContent-Type: application/json\n\n{\"error\":{\"message\":");
  put_json_str(&b, (const uint8_t *)message, strlen(message));
  puts_(&b, ",\"type\":\""), puts_(&b, type), puts_(&b, "\",\"param\":null,\"code\":");
  if (code) puts_(&b, "\""), puts_(&b, code), puts_(&b, "\"");
  else puts_(&b, "null");
  puts_(&b, "}}\n");
  emit_out(&b);
  fprintf(stderr, "kwasi-finish-reason: error\n");
  return 1;
}

static void start_response(void) {
  buf_t b = {0};
  if (streaming) {
    puts_(&b, "Content-Type: text/event-stream\nCache-Control: no-cache\n\n");
    emit_out(&b);
    if (chat) sse_chunk("assistant", (const uint8_t *)"", 0, NULL);  // OpenAI opens with the role
  } else {
    puts_(&b, "Content-Type: application/json\n\n");
    emit_out(&b);
  }
  free(b.p);
}

static long find(const char *h, size_t hn, const char *s, size_t sn) {
  for (size_t i = 0; sn && i + sn <= hn; i++)
    if (!memcmp(h + i, s, sn)) return (long)i;
  return -1;
}

/* Emits what is safe of `pending`; returns 1 when a stop sequence ended the answer. */
static int release(int final) {
  long cut = -1;
  for (size_t k = 0; k < nstops; k++) {
    long at = find(pending.p, pending.n, stops[k], strlen(stops[k]));
    if (at >= 0 && (cut < 0 || at < cut)) cut = at;
  }
  if (cut >= 0) {
    emit_text((const uint8_t *)pending.p, (size_t)cut);
    pending.n = 0;
    return 1;
  }
  size_t hold = 0;
  if (!final) {
    for (size_t k = 0; k < nstops; k++) {  // a suffix that may grow into a stop sequence
      size_t m = strlen(stops[k]);
      for (size_t len = m - 1 < pending.n ? m - 1 : pending.n; len > hold; len--)
        if (!memcmp(pending.p + pending.n - len, stops[k], len)) {
          hold = len;
          break;
        }
    }
    for (size_t back = 1; back <= 3 && back <= pending.n; back++) {  // a UTF-8 character cut short
      if (utf8_len((const uint8_t *)pending.p + pending.n - back, back) == -1) {
        if (back > hold) hold = back;
        break;
      }
    }
  }
  emit_text((const uint8_t *)pending.p, pending.n - hold);
  memmove(pending.p, pending.p + pending.n - hold, hold);
  pending.n = hold;
  return 0;
}

static unsigned long json_count(const char *doc, const char *key) {
  const char *at = strstr(doc, key);
  if (!at) return 0;
  at += strlen(key);
  while (*at == ' ' || *at == ':' || *at == '"') at++;
  return strtoul(at, NULL, 10);
}

static uint8_t piece[8192];
static char meta_out[4096];

int main(void) {
  buf_t prompt = {0};
  for (size_t got; (got = fread(piece, 1, sizeof piece, stdin)) > 0;) put(&prompt, piece, got);
  const char *model = env("KWASI_MODEL", "default"), *metadata = env("KWASI_NN_METADATA", "{}");
  chat = strcmp(env("KWASI_OPENAI_KIND", "chat"), "chat") == 0;
  streaming = strcmp(env("KWASI_STREAM", "0"), "1") == 0;
  include_usage = strcmp(env("KWASI_INCLUDE_USAGE", "0"), "1") == 0;
  id = env("KWASI_OPENAI_ID", "chatcmpl-0");
  created = env("KWASI_OPENAI_CREATED", "0");
  model_json = env("KWASI_OPENAI_MODEL_JSON", "\"default\"");
  unsigned long max_tokens = strtoul(env("KWASI_MAX_TOKENS", "0"), NULL, 10);
  nstops = strtoul(env("KWASI_STOP_COUNT", "0"), NULL, 10);
  if (nstops > MAX_STOPS) nstops = MAX_STOPS;
  for (size_t k = 0; k < nstops; k++) {
    char name[16];
    snprintf(name, sizeof name, "KWASI_STOP_%zu", k);
    stops[k] = env(name, "");
    if (!*stops[k]) nstops = k;
  }

  uint32_t graph, ctx, err;
  err = nn_load_by_name(model, (uint32_t)strlen(model), &graph);
  if (err == NN_NOT_FOUND || err == NN_MODEL_NOT_FOUND)
    return fail(404, "invalid_request_error", "model_not_found", "the model is not loaded on this server");
  if (err) return fail(500, "server_error", NULL, "load_by_name failed");
  if (nn_init_execution_context(graph, &ctx)) return fail(500, "server_error", NULL, "init_execution_context failed");
  uint32_t dims[1] = {1};
  nn_tensor meta = {dims, 1, NN_U8, (const uint8_t *)metadata, (uint32_t)strlen(metadata)};
  if (nn_set_input(ctx, 1, &meta)) return fail(400, "invalid_request_error", NULL, "the backend rejected the sampling options");
  nn_tensor input = {dims, 1, NN_U8, (const uint8_t *)prompt.p, (uint32_t)prompt.n};
  if ((err = nn_set_input(ctx, 0, &input)))
    return fail(400, "invalid_request_error", NULL, "the backend rejected the prompt (chat template or encoding)");

  const char *finish = "stop";
  unsigned long tokens = 0;
  for (int first = 1;; first = 0) {
    uint32_t rc = nn_compute_single(ctx);
    if (first) {
      // The status line waits for the first result, so a prompt that does not fit is still a clean 400.
      if (rc == NN_PROMPT_TOO_LONG)
        return fail(400, "invalid_request_error", "context_length_exceeded", "the prompt does not fit the context");
      if (rc && rc != NN_END_OF_SEQUENCE && rc != NN_CONTEXT_FULL)
        return fail(500, "server_error", NULL, "compute_single failed");
      start_response();
    }
    if (rc == NN_END_OF_SEQUENCE) break;
    if (rc == NN_CONTEXT_FULL) {
      finish = "length";
      break;
    }
    if (rc) {
      fprintf(stderr, "compute_single failed: %u\n", rc);
      finish = "error";
      break;
    }
    uint32_t written = 0;
    if ((err = nn_get_output_single(ctx, 0, piece, sizeof piece, &written))) {
      fprintf(stderr, "get_output_single failed: %u\n", err);
      finish = "error";
      break;
    }
    put(&pending, piece, written);
    tokens++;
    if (release(0)) break;  // a stop sequence: finish stays "stop"
    if (max_tokens && tokens >= max_tokens) {
      finish = "length";
      break;
    }
  }
  release(1);

  uint32_t mlen = 0;
  unsigned long prompt_tokens = 0, completion_tokens = tokens;
  if (!nn_get_output(ctx, 1, (uint8_t *)meta_out, sizeof meta_out - 1, &mlen)) {
    meta_out[mlen] = 0;
    prompt_tokens = json_count(meta_out, "\"input_tokens\"");
    completion_tokens = json_count(meta_out, "\"output_tokens\"");
  }
  nn_fini_single(ctx);
  fprintf(stderr, "kwasi-finish-reason: %s\n", finish);

  buf_t b = {0};
  if (streaming) {
    if (!strcmp(finish, "error")) {
      puts_(&b, "data: {\"error\":{\"message\":\"generation failed\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n");
    } else {
      sse_chunk(NULL, chat ? NULL : (const uint8_t *)"", 0, finish);
      if (include_usage) {
        puts_(&b, "data: ");
        object_head(&b, 1);
        puts_(&b, ",\"choices\":[],");
        usage_json(&b, prompt_tokens, completion_tokens);
        puts_(&b, "}\n\n");
      }
    }
    puts_(&b, "data: [DONE]\n\n");
  } else {
    if (!strcmp(finish, "error")) return 1;  // headers are out; the host ends the response as failed
    object_head(&b, 0);
    puts_(&b, ",\"choices\":[{\"index\":0,");
    if (chat) {
      puts_(&b, "\"message\":{\"role\":\"assistant\",\"content\":");
      put_json_str(&b, (const uint8_t *)content.p, content.n);
      puts_(&b, "},");
    } else {
      puts_(&b, "\"text\":");
      put_json_str(&b, (const uint8_t *)content.p, content.n);
      puts_(&b, ",");
    }
    puts_(&b, "\"logprobs\":null,\"finish_reason\":\"");
    puts_(&b, finish);
    puts_(&b, "\"}],");
    usage_json(&b, prompt_tokens, completion_tokens);
    puts_(&b, "}\n");
  }
  emit_out(&b);
  return 0;
}
