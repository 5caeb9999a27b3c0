// The FFI edge of llama.cpp, made exception-safe.
//
// Several llama.cpp C API functions are not wrapped in try/catch inside
// llama.cpp (llama_tokenize, llama_token_to_piece, llama_decode,
// llama_sampler_sample and the sampler constructors can throw std::bad_alloc,
// std::out_of_range, std::invalid_argument or std::runtime_error). A C++
// exception unwinding into Rust aborts the process ("Rust cannot catch foreign
// exceptions"), so every such call the host makes goes through one of these
// functions, which turn any exception into an error code. The host still
// checks every argument first (src/llama/ffi.rs); this is the second line.
// GGML_ASSERT aborts cannot be caught here: the checks are what prevents them.

#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "llama.h"

namespace {
// The message of the last exception caught on this thread.
thread_local std::string g_last_error;

template <typename F> int32_t guarded(F f, int32_t on_error) {
    try {
        return f();
    } catch (const std::exception &e) {
        g_last_error = e.what();
    } catch (...) {
        g_last_error = "unknown C++ exception";
    }
    return on_error;
}
}  // namespace

extern "C" {

// The message of the last exception a bb_* function caught on this thread.
const char *bb_last_error(void) { return g_last_error.c_str(); }

// INT32_MIN + 1 marks "an exception was caught" for the int32 results below.
#define BB_CAUGHT (INT32_MIN + 1)

int32_t bb_tokenize(const struct llama_vocab *vocab, const char *text, int32_t text_len, llama_token *tokens,
                    int32_t n_tokens_max, bool add_special, bool parse_special) {
    return guarded([&] { return llama_tokenize(vocab, text, text_len, tokens, n_tokens_max, add_special, parse_special); },
                   BB_CAUGHT);
}

int32_t bb_token_to_piece(const struct llama_vocab *vocab, llama_token token, char *buf, int32_t length, int32_t lstrip,
                          bool special) {
    return guarded([&] { return llama_token_to_piece(vocab, token, buf, length, lstrip, special); }, BB_CAUGHT);
}

int32_t bb_decode(struct llama_context *ctx, struct llama_batch batch) {
    return guarded([&] { return llama_decode(ctx, batch); }, BB_CAUGHT);
}

// The sampled token, or -1 with *caught set when an exception was caught.
llama_token bb_sampler_sample(struct llama_sampler *smpl, struct llama_context *ctx, int32_t idx, bool *caught) {
    *caught = false;
    int32_t r = guarded([&] { return llama_sampler_sample(smpl, ctx, idx); }, BB_CAUGHT);
    if (r == BB_CAUGHT) {
        *caught = true;
        return -1;
    }
    return r;
}

// Sampler constructors: NULL when an exception was caught.
struct llama_sampler *bb_sampler_init_penalties(int32_t n_vocab, int32_t last_n, float repeat, float freq,
                                                float present) {
    try {
        return llama_sampler_init_penalties(n_vocab, last_n, repeat, freq, present);
    } catch (const std::exception &e) {
        g_last_error = e.what();
    } catch (...) {
        g_last_error = "unknown C++ exception";
    }
    return nullptr;
}

struct llama_sampler *bb_sampler_init_logit_bias(int32_t n_vocab, int32_t n, const llama_logit_bias *bias) {
    try {
        return llama_sampler_init_logit_bias(n_vocab, n, bias);
    } catch (const std::exception &e) {
        g_last_error = e.what();
    } catch (...) {
        g_last_error = "unknown C++ exception";
    }
    return nullptr;
}

struct llama_sampler *bb_sampler_init_simple(int32_t kind, float p, int32_t k, uint32_t seed) {
    try {
        switch (kind) {
            case 0: return llama_sampler_init_greedy();
            case 1: return llama_sampler_init_dist(seed);
            case 2: return llama_sampler_init_top_k(k);
            case 3: return llama_sampler_init_top_p(p, 1);
            case 4: return llama_sampler_init_min_p(p, 1);
            case 5: return llama_sampler_init_temp(p);
            default: g_last_error = "unknown sampler kind"; return nullptr;
        }
    } catch (const std::exception &e) {
        g_last_error = e.what();
    } catch (...) {
        g_last_error = "unknown C++ exception";
    }
    return nullptr;
}

struct llama_sampler *bb_sampler_chain(void) {
    try {
        return llama_sampler_chain_init(llama_sampler_chain_default_params());
    } catch (...) {
        g_last_error = "cannot create a sampler chain";
    }
    return nullptr;
}

// Takes ownership of smpl (freed on failure). False when an exception was caught.
bool bb_sampler_chain_add(struct llama_sampler *chain, struct llama_sampler *smpl) {
    try {
        llama_sampler_chain_add(chain, smpl);
        return true;
    } catch (...) {
        g_last_error = "cannot add to a sampler chain";
        llama_sampler_free(smpl);
    }
    return false;
}

}  // extern "C"
