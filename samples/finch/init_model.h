/* The model folder `finch init` writes (config.json, random weights, tokenizer); `finch demo` makes
 * its model with it too. */
#ifndef FINCH_SAMPLES_INIT_MODEL_H
#define FINCH_SAMPLES_INIT_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct init_spec {
    const char *arch, *out, *tokenizer;   /* llama|mistral|qwen2|qwen3; the folder; a tokenizer folder to copy or NULL */
    int64_t hidden, layers, heads, kv_heads, head_dim, intermediate, max_position;
    double rope_theta, init_std;
    uint64_t seed;
    int untied;
} init_spec;

/* The defaults of `finch init` (hidden 64, 2 layers, 4 heads, ...; arch and out unset). */
void init_spec_default(init_spec *s);
/* Fills the sizes left 0 from the others (kv_heads = heads, head_dim = hidden / heads, intermediate
 * ~ 8/3 hidden) and checks them: 0, or FINCH_ERR_INVALID_ARGUMENT with a message. */
int init_spec_check(init_spec *s);
/* Writes the folder s->out (which must not hold a config.json yet); config.json is written last, so
 * a failure never leaves something that looks like a model. summary (may be NULL) gets a line saying
 * what was made ("llama model in DIR: 2 layers, hidden 64, ... parameters; tokenizer ..."). */
int init_model_write(const init_spec *s, char *summary, size_t size);

#endif
