// r1d llama.cpp plugin: the memory a load would allocate, from llama.cpp's own no-allocation dry
// run (the mechanism behind llama_params_fit / llama-fit-params in the vendored common/fit.cpp).
//
// llama_get_memory_breakdown is C++ (src/llama-ext.h, a staging header), so this small shim turns
// it into a C array the Rust side reads. Ownership: the caller owns `out` (capacity `cap`
// entries) and every pointer it passes; nothing allocated here outlives the call.

#include "llama.h"
#include "llama-ext.h"
#include "ggml-backend.h"

#include <cstdint>
#include <cstring>
#include <exception>

extern "C" {

// One buffer type's share of the dry run, in bytes.
struct r1_estimate_buffer {
    char name[64];       // buffer type name, e.g. "CPU", "CPU_REPACK", "CUDA0"
    char device[64];     // device name, e.g. "CPU", "CUDA0"; empty when the type has none
    int32_t device_kind; // 0 host memory, 1 GPU, 2 other accelerator
    uint64_t model;      // weights
    uint64_t context;    // KV cache / recurrent state
    uint64_t compute;    // compute buffers
};

// Status codes of r1_llama_estimate.
enum {
    R1_EST_OK = 0,
    R1_EST_MODEL_FAILED = 1,   // llama_model_load_from_file returned NULL (reason in llama.cpp's log)
    R1_EST_CONTEXT_FAILED = 2, // llama_init_from_model returned NULL (reason in llama.cpp's log)
    R1_EST_EXCEPTION = 3,      // llama.cpp threw
};

static void copy_name(char * dst, const char * src) {
    std::strncpy(dst, src ? src : "", 63);
    dst[63] = '\0';
}

// Loads `path` with `mparams` (no_alloc forced on, no weights read) and creates a context with
// `cparams`, then writes one entry per buffer type to out[0..cap) and the number of entries to
// *n_out (entries past `cap` are dropped), and the context length per llama.cpp's rounding to
// *n_ctx_out. Everything is freed before returning.
int32_t r1_llama_estimate(const char * path, const llama_model_params * mparams,
                          const llama_context_params * cparams, r1_estimate_buffer * out,
                          size_t cap, size_t * n_out, uint32_t * n_ctx_out) {
    *n_out = 0;
    *n_ctx_out = 0;
    try {
        llama_model_params mp = *mparams;
        mp.no_alloc = true;
        mp.load_mode = LLAMA_LOAD_MODE_NONE;
        llama_model * model = llama_model_load_from_file(path, mp);
        if (model == nullptr) {
            return R1_EST_MODEL_FAILED;
        }
        llama_context * ctx = llama_init_from_model(model, *cparams);
        if (ctx == nullptr) {
            llama_model_free(model);
            return R1_EST_CONTEXT_FAILED;
        }
        *n_ctx_out = llama_n_ctx(ctx);
        const llama_memory_breakdown breakdown = llama_get_memory_breakdown(ctx);
        size_t n = 0;
        for (const auto & [buft, mb] : breakdown) {
            if (n >= cap) {
                break;
            }
            r1_estimate_buffer & e = out[n++];
            copy_name(e.name, ggml_backend_buft_name(buft));
            ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
            copy_name(e.device, dev ? ggml_backend_dev_name(dev) : "");
            int32_t kind = 0;
            if (!ggml_backend_buft_is_host(buft) && dev != nullptr) {
                switch (ggml_backend_dev_type(dev)) {
                    case GGML_BACKEND_DEVICE_TYPE_CPU: kind = 0; break;
                    case GGML_BACKEND_DEVICE_TYPE_GPU:
                    case GGML_BACKEND_DEVICE_TYPE_IGPU: kind = 1; break;
                    default: kind = 2; break;
                }
            }
            e.device_kind = kind;
            e.model = mb.model;
            e.context = mb.context;
            e.compute = mb.compute;
        }
        *n_out = n;
        llama_free(ctx);
        llama_model_free(model);
        return R1_EST_OK;
    } catch (const std::exception &) {
        return R1_EST_EXCEPTION;
    } catch (...) {
        return R1_EST_EXCEPTION;
    }
}

} // extern "C"
