/* gpu-check's llama.cpp driver: greedy generation from a GGUF with N layers offloaded.
 *
 *   gpu_check_llama MODEL N_GPU_LAYERS N_TOKENS PROMPT
 *
 * Built by scripts/gpu-check against the libllama that CMake builds from the llamacpp plugin's
 * vendored sources (the crate ships the library sources, not llama.cpp's tools, so this stands
 * in for llama-simple/llama-bench). Prints the generated text on stdout, and on stderr (after
 * llama.cpp's own log) one line "n_gpu_layers=N blocks=B prompt_tokens=P gen_tokens=G
 * prompt_tps=X gen_tps=Y". The prompt is tokenized
 * with special tokens parsed and no BOS added (the chat template carries its own). End of
 * generation is ignored so that every run produces N_TOKENS. Exit 1 on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llama.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL N_GPU_LAYERS N_TOKENS PROMPT\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int ngl = atoi(argv[2]);
    int n_gen = atoi(argv[3]);
    const char *prompt = argv[4];

    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = ngl;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) {
        fprintf(stderr, "failed to load %s\n", path);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);

    int n_prompt = -llama_tokenize(vocab, prompt, (int32_t)strlen(prompt), NULL, 0, false, true);
    llama_token *tokens = malloc(sizeof(llama_token) * (size_t)(n_prompt + n_gen + 1));
    if (llama_tokenize(vocab, prompt, (int32_t)strlen(prompt), tokens, n_prompt, false, true) < 0) {
        fprintf(stderr, "failed to tokenize the prompt\n");
        return 1;
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n_prompt + n_gen + 16);
    cp.n_batch = (uint32_t)n_prompt;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "failed to create a context\n");
        return 1;
    }
    struct llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

    double t0 = now();
    struct llama_batch batch = llama_batch_get_one(tokens, n_prompt);
    if (llama_decode(ctx, batch)) {
        fprintf(stderr, "failed to evaluate the prompt\n");
        return 1;
    }
    double t1 = now();
    for (int i = 0; i < n_gen; i++) {
        llama_token t = llama_sampler_sample(smpl, ctx, -1);
        char piece[256];
        int n = llama_token_to_piece(vocab, t, piece, sizeof piece, 0, false);
        if (n > 0) {
            fwrite(piece, 1, (size_t)n, stdout);
        }
        tokens[n_prompt + i] = t;
        batch = llama_batch_get_one(&tokens[n_prompt + i], 1);
        if (llama_decode(ctx, batch)) {
            fprintf(stderr, "failed to evaluate token %d\n", i);
            return 1;
        }
    }
    double t2 = now();
    fflush(stdout);
    /* What was asked for; what llama.cpp did is its own log line "offloaded K/L layers to GPU"
     * (printed only where a GPU backend exists). */
    fprintf(stderr, "\nn_gpu_layers=%d blocks=%d prompt_tokens=%d gen_tokens=%d prompt_tps=%.1f gen_tps=%.1f\n",
            ngl, llama_model_n_layer(model), n_prompt, n_gen, n_prompt / (t1 - t0),
            n_gen / (t2 - t1));
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    free(tokens);
    return 0;
}
