/* crashc: a test backend plugin written in C against plugins/abi/r1_plugin.h, for the tests of
 * r1d's worker process (tests/tests/e2e/worker.rs builds it with `cc -shared`).
 *
 * A model is any file; its first word says what `generate` does:
 *   ok     answers "ok" (two tokens) and stops;
 *   segv   writes through a null pointer (SIGSEGV);
 *   abort  calls abort() (SIGABRT), as a failed GGML_ASSERT does;
 *   stack  recurses until the stack overflows;
 *   exit   calls _exit(4);
 *   hang   never returns;
 *   spin   never returns, computing all the while;
 *   fork-segv  starts a child process that keeps the worker's pipes open (sleeps 300 s), then
 *          writes through a null pointer.
 * `load-segv` crashes in `load` instead. Built with -DCRASHC_PROBE_FAULT='"MODE"' (segv, hang, …)
 * it fails that way in `probe`, before any model. Before a fault it logs an error line through the host's
 * logger, so the host can report the plugin's last words. Not a model: nothing here reads text.
 * Tokens are bytes (id = byte + 1); the chat template concatenates the message contents.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "r1_plugin.h"

static R1LogFn g_log;
static void *g_log_data;

struct R1Model {
    char mode[16];
    char *path;
};

static R1Str str_of(const char *s) {
    R1Str r = {(const uint8_t *)s, strlen(s)};
    return r;
}

static void say(int32_t level, const char *message) {
    if (g_log) g_log(g_log_data, level, str_of("crashc"), str_of(message));
}

static R1OwnedStr owned(const char *s) {
    R1OwnedStr r;
    size_t n = strlen(s);
    uint8_t *p = malloc(n ? n : 1);
    memcpy(p, s, n);
    r.ptr = p;
    r.len = n;
    r.cap = n;
    return r;
}

static void free_string(R1OwnedStr s) { free(s.ptr); }

static void set_logger(R1LogFn log, void *user_data) {
    g_log = log;
    g_log_data = user_data;
}

static void fault(const char *mode);

static R1Status probe(R1OwnedStr *out_json, R1OwnedStr *out_error) {
    (void)out_error;
#ifdef CRASHC_PROBE_FAULT
    fault(CRASHC_PROBE_FAULT);
#endif
    *out_json = owned("{\"available\": true, \"score\": 1, \"formats\": [\"crashc\"]}");
    return R1_OK;
}

static volatile int g_depth;

static int recurse(int n) {
    volatile char frame[4096];
    frame[0] = (char)n;
    g_depth = n;
    return recurse(n + 1) + frame[0];
}

static void fault(const char *mode) {
    char line[96];
    snprintf(line, sizeof line, "crashc: about to fail with '%s', as the model file says", mode);
    say(R1_LOG_ERROR, line);
    if (strcmp(mode, "fork-segv") == 0) {
        if (fork() == 0) {
            sleep(300);
            _exit(0);
        }
        *(volatile int *)0 = 1;
    } else if (strcmp(mode, "segv") == 0 || strcmp(mode, "load-segv") == 0) {
        *(volatile int *)0 = 1;
    } else if (strcmp(mode, "abort") == 0) {
        abort();
    } else if (strcmp(mode, "stack") == 0) {
        recurse(0);
    } else if (strcmp(mode, "exit") == 0) {
        _exit(4);
    } else if (strcmp(mode, "hang") == 0) {
        for (;;) pause();
    } else if (strcmp(mode, "spin") == 0) {
        for (volatile unsigned long i = 0;; i++) {
        }
    }
}

/* The value of "path" in the load parameters (no escapes in test paths). */
static char *path_of(R1Str json) {
    const char *key = "\"path\":\"";
    size_t k = strlen(key);
    for (size_t i = 0; i + k <= json.len; i++) {
        if (memcmp(json.ptr + i, key, k) == 0) {
            size_t start = i + k, end = start;
            while (end < json.len && json.ptr[end] != '"') end++;
            char *p = malloc(end - start + 1);
            memcpy(p, json.ptr + start, end - start);
            p[end - start] = 0;
            return p;
        }
    }
    return NULL;
}

static R1Status load(R1Str params_json, R1ProgressFn progress, void *progress_user_data,
                     R1Model **out_model, R1OwnedStr *out_error) {
    char *path = path_of(params_json);
    if (!path) {
        *out_error = owned("crashc: no path in the load parameters");
        return R1_ERR_INVALID_ARGUMENT;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        *out_error = owned("crashc: cannot open the model file");
        free(path);
        return R1_ERR_LOAD_FAILED;
    }
    R1Model *m = calloc(1, sizeof *m);
    if (fscanf(f, "%15s", m->mode) != 1) strcpy(m->mode, "ok");
    fclose(f);
    m->path = path;
    if (progress && !progress(progress_user_data, 1.0f)) {
        free(m->path);
        free(m);
        return R1_ERR_CANCELLED;
    }
    if (strcmp(m->mode, "load-segv") == 0) fault(m->mode);
    *out_model = m;
    return R1_OK;
}

static R1Status info(const R1Model *model, R1OwnedStr *out_json, R1OwnedStr *out_error) {
    (void)out_error;
    char json[1024];
    snprintf(json, sizeof json,
             "{\"path\": \"%s\", \"name\": \"crashc-%s\", \"context_length\": 256, "
             "\"trained_context_length\": 256, \"vocab_size\": 257, "
             "\"chat_template\": \"{%% for m in messages %%}{{ m.content }}{%% endfor %%}\", "
             "\"parallel_sequences\": 1}",
             model->path, model->mode);
    *out_json = owned(json);
    return R1_OK;
}

static R1Status tokenize(const R1Model *model, R1Str text, bool add_special, bool parse_special,
                         int32_t *out_tokens, size_t capacity, size_t *out_len,
                         R1OwnedStr *out_error) {
    (void)model, (void)add_special, (void)parse_special, (void)out_error;
    *out_len = text.len;
    if (text.len > capacity) return R1_ERR_BUFFER_TOO_SMALL;
    for (size_t i = 0; i < text.len; i++) out_tokens[i] = (int32_t)text.ptr[i] + 1;
    return R1_OK;
}

static R1Status generate(R1Model *model, R1Str request_json, R1TokenFn on_token,
                         void *token_user_data, R1OwnedStr *out_json, R1OwnedStr *out_error) {
    (void)request_json, (void)out_error;
    if (strcmp(model->mode, "ok") != 0) fault(model->mode);
    const char *answer = "ok";
    int n = 0;
    for (const char *c = answer; *c; c++) {
        if (!on_token(token_user_data, (const uint8_t *)c, 1, (int32_t)(unsigned char)*c + 1)) {
            *out_json = owned("{\"finish_reason\": \"cancelled\", \"prompt_tokens\": 0, "
                              "\"completion_tokens\": 0, \"prompt_ms\": 0, \"generation_ms\": 0}");
            return R1_OK;
        }
        n++;
    }
    char json[256];
    snprintf(json, sizeof json,
             "{\"finish_reason\": \"stop\", \"prompt_tokens\": 0, \"completion_tokens\": %d, "
             "\"prompt_ms\": 0, \"generation_ms\": 0}",
             n);
    *out_json = owned(json);
    return R1_OK;
}

static void unload(R1Model *model) {
    free(model->path);
    free(model);
}

static const R1PluginApi API = {
    .abi_version = R1_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(R1PluginApi),
    .name = {(const uint8_t *)"crashc", 6},
    .version = {(const uint8_t *)"0.1.0", 5},
    .free_string = free_string,
    .set_logger = set_logger,
    .probe = probe,
    .load = load,
    .info = info,
    .tokenize = tokenize,
    .generate = generate,
    .unload = unload,
};

const R1PluginApi *r1_plugin_entry(uint32_t host_abi_version) {
    return host_abi_version == R1_PLUGIN_ABI_VERSION ? &API : NULL;
}
