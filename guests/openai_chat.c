/* The default OpenAI guest of `kwasi-runtime serve`: /v1/chat/completions, /v1/completions, /v1/embeddings,
 * /tokenize and /detokenize.
 *
 * The host has already validated the request (runtime/kwasi_runtime/serve/openai.py describes the contract):
 * stdin is the prompt (a JSON list of messages in chat mode), KWASI_* variables carry the rest. This guest
 * runs the generation through WASI-NN (load_by_name, set_input(1) metadata, set_input(0) prompt,
 * compute_single per token, get_output(1) usage) and writes the HTTP response: a CGI prelude, then either
 * SSE chunks as tokens arrive or one JSON object at the end. It applies max_tokens and stop sequences itself,
 * holding back text that may be the start of a stop sequence or of a UTF-8 character. Tool calls and logprobs
 * come from the backend's extension outputs (2-4) as JSON, pasted as they are. The finish reason goes to
 * stderr as `kwasi-finish-reason: R` for the host's metrics. No JSON parsing: JSON is only written here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "openai_json.h"
#include "wasi_nn.h"

#define MAX_STOPS 4

static const char *env(const char *k, const char *d) {
  const char *v = getenv(k);
  return v ? v : d;
}

static int chat, streaming, include_usage, tools, logprobs;  // logprobs: 1 chat entries, 2 completions
static const char *id, *created, *model_json;
static const char *stops[MAX_STOPS];
static size_t nstops;
static buf_t pending, content;  // held-back text; the whole answer when not streaming
static buf_t fingerprint;       // "fp_..." from the backend's build, a JSON string
static buf_t lp_new, lp_all;    // chat logprob entries not yet sent / all of them
static buf_t lp_tok[2], lp_val[2], lp_top[2], lp_off[2];  // completions logprobs: [0] not yet sent, [1] all
static unsigned long chars_out;  // characters generated so far (completions text_offset)
static uint32_t ctx;

static void emit_out(buf_t *b) {
  fwrite(b->p, 1, b->n, stdout);
  fflush(stdout);  // one write per event: the host streams each as it comes
  b->n = 0;
}

/* get_output(_single) of any size: grows `out` when the backend says TOO_LARGE. Returns the errno. */
static uint32_t output(int single, uint32_t index, buf_t *out) {
  out->n = 0;
  for (;;) {
    if (out->cap < 4096) {
      char *p = realloc(out->p, 4096);
      if (!p) abort();
      out->p = p, out->cap = 4096;
    }
    uint32_t written = 0;
    uint32_t rc = single ? nn_get_output_single(ctx, index, (uint8_t *)out->p, (uint32_t)out->cap - 1, &written)
                         : nn_get_output(ctx, index, (uint8_t *)out->p, (uint32_t)out->cap - 1, &written);
    if (rc == NN_TOO_LARGE && written >= out->cap - 1) {
      char *p = realloc(out->p, (size_t)written + 1);
      if (!p) abort();
      out->p = p, out->cap = (size_t)written + 1;
      continue;
    }
    out->n = rc ? 0 : written;
    out->p[out->n] = 0;
    return rc;
  }
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
  if (fingerprint.n) puts_(b, ",\"system_fingerprint\":"), put(b, fingerprint.p, fingerprint.n);
}

/* Completions logprobs object from the lists at slot w (0: since the last chunk, 1: all). */
static void completion_logprobs(buf_t *b, int w) {
  puts_(b, "{\"tokens\":["), put(b, lp_tok[w].p, lp_tok[w].n);
  puts_(b, "],\"token_logprobs\":["), put(b, lp_val[w].p, lp_val[w].n);
  puts_(b, "],\"top_logprobs\":["), put(b, lp_top[w].p, lp_top[w].n);
  puts_(b, "],\"text_offset\":["), put(b, lp_off[w].p, lp_off[w].n);
  puts_(b, "]}");
}

static void logprobs_json(buf_t *b, int all) {
  if (!logprobs) {
    puts_(b, "null");
  } else if (logprobs == 1) {
    buf_t *src = all ? &lp_all : &lp_new;
    puts_(b, "{\"content\":["), put(b, src->p, src->n), puts_(b, "]}");
  } else {
    completion_logprobs(b, all ? 1 : 0);
  }
  if (!all) lp_new.n = lp_tok[0].n = lp_val[0].n = lp_top[0].n = lp_off[0].n = 0;
}

/* One SSE event with a delta (chat) or text (completions); finish is NULL while streaming. */
static void sse_chunk(const char *role, const uint8_t *text, size_t n, const char *tool_deltas,
                      const char *finish) {
  buf_t b = {0};
  puts_(&b, "data: ");
  object_head(&b, 1);
  puts_(&b, ",\"choices\":[{\"index\":0,");
  if (chat) {
    puts_(&b, "\"delta\":{");
    int fields = 0;
    if (role) puts_(&b, "\"role\":\""), puts_(&b, role), puts_(&b, "\""), fields++;
    if (text) puts_(&b, fields++ ? "," : ""), puts_(&b, "\"content\":"), put_json_str(&b, text, n);
    if (tool_deltas) puts_(&b, fields++ ? "," : ""), puts_(&b, "\"tool_calls\":"), puts_(&b, tool_deltas);
    puts_(&b, "},\"logprobs\":");
  } else {
    puts_(&b, "\"text\":");
    put_json_str(&b, text ? text : (const uint8_t *)"", text ? n : 0);
    puts_(&b, ",\"logprobs\":");
  }
  logprobs_json(&b, 0);
  puts_(&b, ",\"finish_reason\":");
  if (finish) puts_(&b, "\""), puts_(&b, finish), puts_(&b, "\"");
  else puts_(&b, "null");
  puts_(&b, "}]}\n\n");
  emit_out(&b);
  free(b.p);
}

static void emit_text(const uint8_t *s, size_t n) {
  if (!n) return;
  if (streaming) sse_chunk(NULL, s, n, NULL, NULL);
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
    if (chat) sse_chunk("assistant", (const uint8_t *)"", 0, NULL, NULL);  // OpenAI opens with the role
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

static void list_add(buf_t *b, const char *s, size_t n) {
  if (b->n) put(b, ",", 1);
  put(b, s, n);
}

/* After each sampled token: its logprobs entry, into the lists the next chunk (and the answer) carry. */
static void take_logprobs(buf_t *scratch) {
  if (!logprobs || output(1, logprobs == 1 ? 3 : 4, scratch) || !scratch->n) return;
  if (logprobs == 1) {
    list_add(&lp_new, scratch->p, scratch->n), list_add(&lp_all, scratch->p, scratch->n);
    return;
  }
  char *nl1 = memchr(scratch->p, '\n', scratch->n);
  char *nl2 = nl1 ? memchr(nl1 + 1, '\n', scratch->n - (size_t)(nl1 + 1 - scratch->p)) : NULL;
  if (!nl2) return;
  char off[24];
  snprintf(off, sizeof off, "%lu", chars_out);
  for (int w = 0; w < 2; w++) {
    list_add(&lp_tok[w], scratch->p, (size_t)(nl1 - scratch->p));
    list_add(&lp_val[w], nl1 + 1, (size_t)(nl2 - nl1 - 1));
    list_add(&lp_top[w], nl2 + 1, scratch->n - (size_t)(nl2 + 1 - scratch->p));
    list_add(&lp_off[w], off, strlen(off));
  }
}

static uint8_t piece[8192];
static buf_t prompt, meta, scratch, deltas;

static uint32_t set_u8(uint32_t index, const void *data, size_t n, int ids) {
  uint32_t dims[1] = {ids ? (uint32_t)(n / 4) : (uint32_t)n};
  nn_tensor t = {dims, 1, ids ? NN_I32 : NN_U8, (const uint8_t *)data, (uint32_t)n};
  return nn_set_input(ctx, index, &t);
}

static void read_fingerprint(void) {
  if (output(0, 1, &meta)) return;
  const char *commit = "";
  size_t n = json_text(meta.p, "\"llama_commit\"", &commit);
  buf_t fp = {0};
  puts_(&fp, "fp_"), put(&fp, commit, n), puts_(&fp, "_b"), putu(&fp, json_count(meta.p, "\"llama_build_number\""));
  put_json_str(&fingerprint, (const uint8_t *)fp.p, fp.n);
  free(fp.p);
}

/* ---- embeddings, tokenize, detokenize: one JSON object each ------------------------------------------- */
static int embeddings(void) {
  int base64 = strcmp(env("KWASI_EMBED_BASE64", "0"), "1") == 0;
  buf_t b = {0};
  unsigned long tokens = 0;
  puts_(&b, "Content-Type: application/json\n\n{\"object\":\"list\",\"data\":[");
  size_t at = 0;
  for (unsigned long i = 0; at < prompt.n; i++) {
    int ids = prompt.p[at] == 'i';
    char *colon;
    size_t len = strtoul(prompt.p + at + 1, &colon, 10);
    const char *data = colon + 1;
    at = (size_t)(data - prompt.p) + len;
    if (set_u8(0, data, len, ids)) return fail(400, "invalid_request_error", NULL, "the backend rejected an input");
    uint32_t rc = nn_compute(ctx);
    if (rc == NN_PROMPT_TOO_LONG)
      return fail(400, "invalid_request_error", "context_length_exceeded", "an input is too long for the model");
    if (rc == NN_INVALID_ARGUMENT || rc == NN_UNSUPPORTED)
      return fail(400, "invalid_request_error", NULL, "this model does not make embeddings (or not of this input)");
    if (rc || output(0, 0, &scratch)) return fail(500, "server_error", NULL, "the embedding failed");
    char *open = strchr(scratch.p, '['), *close = strrchr(scratch.p, ']');
    if (!open || !close) return fail(500, "server_error", NULL, "the backend's embedding is not a JSON array");
    if (!output(0, 1, &meta)) tokens += json_count(meta.p, "\"input_tokens\"");
    if (i) puts_(&b, ",");
    puts_(&b, "{\"object\":\"embedding\",\"index\":"), putu(&b, i), puts_(&b, ",\"embedding\":");
    if (base64) put_base64_floats(&b, open, (size_t)(close - open));
    else put(&b, open, (size_t)(close - open + 1));
    puts_(&b, "}");
  }
  puts_(&b, "],\"model\":"), puts_(&b, model_json), puts_(&b, ",\"usage\":{\"prompt_tokens\":"), putu(&b, tokens);
  puts_(&b, ",\"total_tokens\":"), putu(&b, tokens), puts_(&b, "}}\n");
  emit_out(&b);
  return 0;
}

static int tokenize(int ids) {
  if (set_u8(0, prompt.p, prompt.n, ids))
    return fail(400, "invalid_request_error", NULL, "the backend rejected the input (token ids or chat template)");
  buf_t b = {0};
  puts_(&b, "Content-Type: application/json\n\n{");
  if (!ids) {
    if (output(0, 3, &scratch) || output(0, 1, &meta)) return fail(500, "server_error", NULL, "tokenize failed");
    puts_(&b, "\"count\":"), putu(&b, json_count(meta.p, "\"input_tokens\""));
    puts_(&b, ",\"max_model_len\":"), puts_(&b, env("KWASI_MAX_MODEL_LEN", "0"));
    puts_(&b, ",\"tokens\":"), put(&b, scratch.p, scratch.n);
  } else {
    if (output(0, 4, &scratch)) return fail(500, "server_error", NULL, "detokenize failed");
    puts_(&b, "\"prompt\":"), put_json_str(&b, (const uint8_t *)scratch.p, scratch.n);
  }
  puts_(&b, "}\n");
  emit_out(&b);
  return 0;
}

int main(void) {
  for (size_t got; (got = fread(piece, 1, sizeof piece, stdin)) > 0;) put(&prompt, piece, got);
  const char *model = env("KWASI_MODEL", "default"), *metadata = env("KWASI_NN_METADATA", "{}");
  const char *kind = env("KWASI_OPENAI_KIND", "chat");
  chat = strcmp(kind, "chat") == 0;
  streaming = strcmp(env("KWASI_STREAM", "0"), "1") == 0;
  include_usage = strcmp(env("KWASI_INCLUDE_USAGE", "0"), "1") == 0;
  tools = strcmp(env("KWASI_TOOLS", "0"), "1") == 0;
  logprobs = atoi(env("KWASI_LOGPROBS", "0"));
  int prompt_ids = strcmp(env("KWASI_PROMPT_IDS", "0"), "1") == 0;
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

  uint32_t graph, err;
  err = nn_load_by_name(model, (uint32_t)strlen(model), &graph);
  if (err == NN_NOT_FOUND || err == NN_MODEL_NOT_FOUND)
    return fail(404, "invalid_request_error", "model_not_found", "the model is not loaded on this server");
  if (err) return fail(500, "server_error", NULL, "load_by_name failed");
  if (nn_init_execution_context(graph, &ctx)) return fail(500, "server_error", NULL, "init_execution_context failed");
  if (set_u8(1, metadata, strlen(metadata), 0))
    return fail(400, "invalid_request_error", NULL,
                "the backend rejected the request's options (sampling, logit_bias, grammar, JSON schema or tools)");
  if (!strcmp(kind, "embedding")) return embeddings();
  if (!strcmp(kind, "tokenize")) return tokenize(0);
  if (!strcmp(kind, "detokenize")) return tokenize(1);
  if ((err = set_u8(0, prompt.p, prompt.n, prompt_ids)))
    return fail(400, "invalid_request_error", NULL, "the backend rejected the prompt (chat template, encoding or ids)");
  read_fingerprint();

  const char *finish = "stop";
  unsigned long tokens = 0;
  int called = 0;  // tool-call deltas went out
  for (int first = 1;; first = 0) {
    uint32_t rc = nn_compute_single(ctx);
    if (first) {
      // The status line waits for the first result, so a prompt that does not fit is still a clean 400.
      if (rc == NN_PROMPT_TOO_LONG)
        return fail(400, "invalid_request_error", "context_length_exceeded", "the prompt (plus max_tokens) does not fit the context");
      if (rc == NN_INVALID_ARGUMENT)  // e.g. a prompt of no tokens at all
        return fail(400, "invalid_request_error", NULL, "the backend cannot generate from this prompt (is it empty?)");
      if (rc && rc != NN_END_OF_SEQUENCE && rc != NN_CONTEXT_FULL)
        return fail(500, "server_error", NULL, "compute_single failed");
      start_response();
    }
    if (rc == NN_CONTEXT_FULL) {
      finish = "length";
      break;
    }
    if (rc && rc != NN_END_OF_SEQUENCE) {
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
    // After END_OF_SEQUENCE the piece is what a tool-call parser still held back (usually nothing).
    if (rc == NN_OK) take_logprobs(&scratch), chars_out += utf8_chars((const char *)piece, written);
    put(&pending, piece, written);
    if (tools && !output(1, 2, &deltas) && deltas.n) {
      called = 1;
      if (streaming) release(1), sse_chunk(NULL, NULL, 0, deltas.p, NULL);
    }
    if (rc == NN_END_OF_SEQUENCE) break;
    tokens++;
    if (release(0)) break;  // a stop sequence: finish stays "stop"
    if (max_tokens && tokens >= max_tokens) {
      finish = "length";
      break;
    }
  }
  release(1);

  unsigned long prompt_tokens = 0, completion_tokens = tokens;
  if (!output(0, 1, &meta)) {
    prompt_tokens = json_count(meta.p, "\"input_tokens\"");
    completion_tokens = json_count(meta.p, "\"output_tokens\"");
  }
  buf_t calls = {0};
  if (tools && !output(0, 2, &calls) && calls.n > 2) called = 1;
  if (called && !strcmp(finish, "stop")) finish = "tool_calls";
  nn_fini_single(ctx);
  fprintf(stderr, "kwasi-finish-reason: %s\n", !strcmp(finish, "tool_calls") ? "stop" : finish);

  buf_t b = {0};
  if (streaming) {
    if (!strcmp(finish, "error")) {
      puts_(&b, "data: {\"error\":{\"message\":\"generation failed\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n");
    } else {
      sse_chunk(NULL, chat ? NULL : (const uint8_t *)"", 0, NULL, finish);
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
      if (called && !content.n) puts_(&b, "null");
      else put_json_str(&b, (const uint8_t *)content.p, content.n);
      if (called) puts_(&b, ",\"tool_calls\":"), put(&b, calls.p, calls.n);
      puts_(&b, "},");
    } else {
      puts_(&b, "\"text\":");
      put_json_str(&b, (const uint8_t *)content.p, content.n);
      puts_(&b, ",");
    }
    puts_(&b, "\"logprobs\":");
    logprobs_json(&b, 1);
    puts_(&b, ",\"finish_reason\":\"");
    puts_(&b, finish);
    puts_(&b, "\"}],");
    usage_json(&b, prompt_tokens, completion_tokens);
    puts_(&b, "}\n");
  }
  emit_out(&b);
  return 0;
}
