/*
 * r1_plugin.h — the r1d backend plugin C ABI, version 1.
 *
 * A plugin is a shared library named libr1_plugin_<name>.so that exports
 *
 *     const R1PluginApi *r1_plugin_entry(uint32_t host_abi_version);
 *
 * returning a pointer to a static function table (or NULL when it cannot serve a host of that
 * version). The table starts with abi_version and struct_size; fields are only ever appended.
 *
 * Ownership rules (as in tree-sitter's api.h):
 *  - R1Str arguments are borrowed UTF-8 (pointer + length, no NUL) for the duration of the call.
 *  - R1OwnedStr results (error messages, JSON documents) are allocated by the plugin and owned by
 *    the caller, who releases them with the same plugin's free_string. The zero value means
 *    "no string" and may be freed harmlessly.
 *  - Callbacks are invoked on the calling thread before the call returns; the bytes they receive
 *    are borrowed for the callback only.
 *  - A model handle from load is owned by the caller until passed to unload. One call at a time
 *    per handle, unless the model's ModelInfo says "parallel_sequences": N > 1: then info and
 *    tokenize may be called at any time from any thread and up to N generate calls may run at
 *    once (the plugin batches them); unload only when no other call runs. Different handles may
 *    be used concurrently.
 *
 * The Rust definitions in plugins/abi/src/lib.rs are the same contract; a test compiles this
 * header and fails when the two drift apart. JSON shapes: plugins/abi/src/json.rs.
 */
#ifndef R1_PLUGIN_H
#define R1_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define R1_PLUGIN_ABI_VERSION 1

/* Status codes (int32_t; a newer plugin may return codes an older host does not know). */
typedef int32_t R1Status;
#define R1_OK 0
#define R1_ERR_INVALID_ARGUMENT 1 /* malformed JSON, NULL pointer, bad option value */
#define R1_ERR_LOAD_FAILED 2      /* missing, truncated or corrupt model; out of memory */
#define R1_ERR_CANCELLED 3        /* a progress or token callback returned false */
#define R1_ERR_CONTEXT_EXCEEDED 4 /* the prompt does not fit the context length */
#define R1_ERR_BACKEND 5          /* decode or device error while running */
#define R1_ERR_PANIC 6            /* the plugin panicked / threw; caught at the boundary */
#define R1_ERR_UNSUPPORTED 7      /* the operation is not supported by this backend */
#define R1_ERR_BUFFER_TOO_SMALL 8 /* caller buffer too small; needed length written out */

/* token_id of a prompt-progress call of R1TokenFn: between prompt batches a plugin may call the
 * token callback with len 0 and this id so the host can stop a long prompt (return false).
 * Such calls are not tokens: not streamed, not counted. */
#define R1_TOKEN_PROMPT_PROGRESS (-1)
/* token_id of a log-probability call of r1_token_fn (appended to v1): the piece is a JSON
 * document {"logprob": f, "top": [{"id": i, "bytes": [b...], "logprob": f}...]} describing the
 * token of the next call. Made only for requests with "logprobs" set, by a model whose info says
 * "logprobs": true. */
#define R1_TOKEN_LOGPROBS (-2)

/* Log levels for R1LogFn. */
#define R1_LOG_ERROR 1
#define R1_LOG_WARN 2
#define R1_LOG_INFO 3
#define R1_LOG_DEBUG 4
#define R1_LOG_TRACE 5

/* Borrowed UTF-8 string; ptr may be NULL when len is 0. */
typedef struct R1Str {
    const uint8_t *ptr;
    size_t len;
} R1Str;

/* Plugin-allocated string, owned by the receiver, freed with free_string of the same plugin. */
typedef struct R1OwnedStr {
    uint8_t *ptr;
    size_t len;
    size_t cap; /* meaningful only to the allocating plugin */
} R1OwnedStr;

/* Opaque model handle. */
typedef struct R1Model R1Model;

/* Load progress in [0, 1]; return false to abort the load (load then returns R1_ERR_CANCELLED). */
typedef bool (*R1ProgressFn)(void *user_data, float progress);

/* One decoded piece (raw token bytes; UTF-8 may be split across pieces) and its token id.
 * Return false to stop generating (generate then returns R1_OK, finish_reason "cancelled").
 * Also called with len 0 and token_id R1_TOKEN_PROMPT_PROGRESS between prompt batches. */
typedef bool (*R1TokenFn)(void *user_data, const uint8_t *piece, size_t len, int32_t token_id);

/* One log line from the plugin; target and message are borrowed for the call. Any thread. */
typedef void (*R1LogFn)(void *user_data, int32_t level, R1Str target, R1Str message);

typedef struct R1PluginApi {
    uint32_t abi_version; /* R1_PLUGIN_ABI_VERSION the plugin implements */
    uint32_t struct_size; /* sizeof(R1PluginApi) as the plugin was built */
    R1Str name;           /* static, e.g. "llamacpp" */
    R1Str version;        /* static, e.g. "0.1.0 (llama.cpp b6000)" */

    /* Frees a string this plugin allocated. Accepts the zero value. */
    void (*free_string)(R1OwnedStr s);

    /* Installs the host's log sink; user_data must stay valid for the rest of the process. */
    void (*set_logger)(R1LogFn log, void *user_data);

    /* Can this backend run here? *out_json: ProbeReport JSON (caller frees). An unavailable
     * backend is R1_OK with "available": false and a "reason". */
    R1Status (*probe)(R1OwnedStr *out_json, R1OwnedStr *out_error);

    /* Loads a model. params_json: LoadParams JSON (borrowed). progress may be NULL.
     * *out_model: new handle owned by the caller. *out_error on failure names file and reason. */
    R1Status (*load)(R1Str params_json, R1ProgressFn progress, void *progress_user_data,
                     R1Model **out_model, R1OwnedStr *out_error);

    /* *out_json: ModelInfo JSON (caller frees). */
    R1Status (*info)(const R1Model *model, R1OwnedStr *out_json, R1OwnedStr *out_error);

    /* Tokenizes text into out_tokens[0..capacity) (caller-owned); *out_len = full count.
     * Returns R1_ERR_BUFFER_TOO_SMALL when the count exceeds capacity. */
    R1Status (*tokenize)(const R1Model *model, R1Str text, bool add_special, bool parse_special,
                         int32_t *out_tokens, size_t capacity, size_t *out_len,
                         R1OwnedStr *out_error);

    /* Generates. request_json: GenerateRequest JSON (borrowed). Each piece goes to on_token as
     * it is sampled. *out_json: GenerateResult JSON (usage, timings; caller frees). */
    R1Status (*generate)(R1Model *model, R1Str request_json, R1TokenFn on_token,
                         void *token_user_data, R1OwnedStr *out_json, R1OwnedStr *out_error);

    /* Releases a model; the handle is invalid afterwards. NULL is ignored. */
    void (*unload)(R1Model *model);

    /* ---- Appended to ABI v1: absent when struct_size ends before a field. ---- */

    /* What loading with params_json (LoadParams JSON, borrowed: the same document load takes)
     * would allocate, without loading the weights. *out_json: Estimate JSON (caller frees).
     * R1_ERR_UNSUPPORTED when the backend cannot estimate. Any thread, also while models are
     * loaded. NULL (or absent) = the plugin has no estimate. */
    R1Status (*estimate)(R1Str params_json, R1OwnedStr *out_json, R1OwnedStr *out_error);
} R1PluginApi;

/* sizeof the v1 table as first published (through unload): the smallest struct_size a host
 * accepts. Fields after it were appended and are optional. */
#define R1_PLUGIN_API_V1_BASE_SIZE offsetof(R1PluginApi, estimate)

typedef const R1PluginApi *(*R1PluginEntryFn)(uint32_t host_abi_version);

/* The one symbol a plugin exports. */
const R1PluginApi *r1_plugin_entry(uint32_t host_abi_version);

#ifdef __cplusplus
}
#endif

#endif /* R1_PLUGIN_H */
