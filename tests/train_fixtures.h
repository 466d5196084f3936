/* Shared pieces of the trainer tests: synthetic conversations and the llama golden model. */
#ifndef FINCH_TESTS_TRAIN_FIXTURES_H
#define FINCH_TESTS_TRAIN_FIXTURES_H

#include "finch/train.h"
#include "tests/testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline int fx_ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

static inline void fx_push(finch_tokens *t, int32_t v)
{
    if (t->len == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 32;
        t->ids = realloc(t->ids, t->cap * sizeof(int32_t));
    }
    t->ids[t->len++] = v;
}

/* n conversations of lengths 6 .. 6 + 3n with random ids below vocab; the first third of each is a
 * prompt (label -100), the rest is trained. Deterministic in seed. */
static inline finch_train_data *fx_conversations(size_t n, uint64_t seed, int32_t vocab)
{
    finch_example *ex = calloc(n, sizeof *ex);
    uint64_t s = seed * 2862933555777941757ull + 3037000493ull;
    for (size_t c = 0; c < n; c++) {
        size_t len = 6 + (c * 7) % (3 * n + 1);
        for (size_t t = 0; t < len; t++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int32_t id = (int32_t)((s >> 33) % (uint64_t)vocab);
            fx_push(&ex[c].ids, id);
            fx_push(&ex[c].labels, t < len / 3 ? FINCH_LABEL_IGNORE : id);
        }
    }
    finch_train_data *d = NULL;
    fx_ok(finch_train_data_from_examples(ex, n, &d), "finch_train_data_from_examples");
    for (size_t c = 0; c < n; c++) finch_example_free(&ex[c]);
    free(ex);
    return d;
}

/* The CPU backend on one thread: the tests stay quick on a loaded 2-core machine. */
static inline finch_runtime *fx_runtime(void)
{
    finch_runtime_options o = {"cpu", NULL, 1};
    finch_runtime *rt = NULL;
    fx_ok(finch_runtime_open_ex(&o, &rt), "finch_runtime_open_ex");
    return rt;
}

static inline void fx_golden_dir(char *dst, size_t size, const char *arch, const char *what)
{
    snprintf(dst, size, "%s/golden/%s/%s", testing_shared_dir(), arch, what);
}

/* The llama golden model, with its PEFT adapter (adapter = 1), full fine-tuning (full = 1) or bare. */
static inline finch_model *fx_llama(finch_runtime *rt, int adapter, int full)
{
    char dir[1200];
    fx_golden_dir(dir, sizeof dir, "llama", "model");
    finch_load_options o = finch_load_options_default();
    o.full_finetune = full;
    finch_model *m = NULL;
    if (!fx_ok(finch_model_load(rt, dir, &o, &m), "finch_model_load")) return NULL;
    fx_golden_dir(dir, sizeof dir, "llama", "adapter");
    if (adapter && !fx_ok(finch_lora_load(m, dir), "finch_lora_load")) {
        finch_model_free(m);
        return NULL;
    }
    return m;
}

/* All trainable values (or gradients) of m, concatenated. */
static inline float *fx_read_all(const finch_model *m, int grads, size_t *count)
{
    int64_t n = finch_trainable_count(m), total = 0;
    for (int64_t i = 0; i < n; i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        total += ti.numel;
    }
    float *v = malloc((size_t)total * sizeof(float) + 1), *at = v;
    for (int64_t i = 0; i < n; i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        if (grads) finch_trainable_grad_read(m, i, at, ti.numel);
        else finch_trainable_read(m, i, at, ti.numel);
        at += ti.numel;
    }
    *count = (size_t)total;
    return v;
}

/* A fresh scratch folder under the test tmp dir. */
static inline void fx_tmp(char *dst, size_t size, const char *name)
{
    snprintf(dst, size, "%s/%s", testing_tmp_dir(), name);
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dst);
    if (system(cmd) != 0) fprintf(stderr, "could not clear %s\n", dst);
}

#endif
