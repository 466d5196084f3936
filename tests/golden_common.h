/* What the golden parity tests (test_golden, test_golden_vl) share: one model's Hugging Face float64
 * references ($FINCH_SHARED_DIR/golden/<name>/golden.safetensors), its tokens, and the comparisons of
 * logits, loss and gradients with them. */
#ifndef FINCH_TESTS_GOLDEN_COMMON_H
#define FINCH_TESTS_GOLDEN_COMMON_H

#include "core/model.h"
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4

static st_set *gold;
static char gold_path[1200];
static int32_t *ids, *labels;
static int64_t B, T;

/* The golden tensor `name` as f32 (free it), or NULL when there is none. */
static inline float *gold_f32(const char *name, int64_t *numel)
{
    const st_tensor *t = st_set_find(gold, name);
    if (!t) return NULL;
    float *v = malloc((size_t)t->numel * sizeof(float) + 1);
    if (v && st_to_f32(t, v)) {
        free(v);
        return NULL;
    }
    if (numel) *numel = t->numel;
    return v;
}

static inline int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

/* Opens <base>/golden.safetensors and reads its input_ids [B, T] and labels; 0 when that fails. */
static inline int open_gold(const char *base)
{
    snprintf(gold_path, sizeof gold_path, "%s/golden.safetensors", base);
    if (!ok(st_set_open_file(gold_path, &gold), gold_path)) return 0;
    const st_tensor *t = st_set_find(gold, "input_ids"), *l = st_set_find(gold, "labels");
    CHECK(t && t->ndim == 2 && l && l->numel == t->numel, "%s: input_ids [B, T] and labels", gold_path);
    if (!t || t->ndim != 2 || !l || l->numel != t->numel) return 0;
    B = t->shape[0];
    T = t->shape[1];
    ids = malloc((size_t)(B * T) * 4);
    labels = malloc((size_t)(B * T) * 4);
    return ids && labels && ok(st_to_i32(t, ids), "input_ids") && ok(st_to_i32(l, labels), "labels");
}

static inline finch_model *load(finch_runtime *rt, const char *dir, int full, int ckpt, finch_dtype dtype)
{
    finch_load_options o = finch_load_options_default();
    o.full_finetune = full;
    o.gradient_checkpointing = ckpt;
    o.compute_dtype = dtype;
    finch_model *m = NULL;
    ok(finch_model_load(rt, dir, &o, &m), "finch_model_load");
    return m;
}

/* The model's logits and the step's loss against <prefix>.logits and <prefix>.loss, within tol;
 * returns the logits' relative error. `tag` starts the printed lines. */
static inline double compare_logits(finch_model *m, const finch_step_result *r, const char *prefix, double tol,
                                    const char *tag)
{
    char name[128];
    snprintf(name, sizeof name, "%s.logits", prefix);
    int64_t n = 0;
    float *ref = gold_f32(name, &n), *got = malloc((size_t)n * sizeof(float) + 1);
    double e = 1;
    CHECK(ref != NULL, "%s: no %s", gold_path, name);
    if (ref && ok(finch_model_logits(m, got, (size_t)n), "finch_model_logits")) {
        e = testing_rel_err(got, ref, (size_t)n);
        CHECK(e <= tol, "%s: rel err %.3g", name, e);
        printf("  %s%-*s rel err %.2e\n", tag, 44 - (int)strlen(tag), name, e);
    }
    free(ref);
    free(got);
    snprintf(name, sizeof name, "%s.loss", prefix);
    float *loss = gold_f32(name, NULL);
    CHECK(loss != NULL, "%s: no %s", gold_path, name);
    if (loss) {
        double el = fabs(r->loss - loss[0]) / fabs(loss[0]);
        CHECK(el <= tol, "%s: %.7f vs %.7f", name, r->loss, loss[0]);
        printf("  %s%-*s %.7f vs %.7f\n", tag, 44 - (int)strlen(tag), name, r->loss, loss[0]);
    }
    free(loss);
    return e;
}

/* Every golden gradient <prefix><name> matches the trainable of that name (times factor), and every
 * one has a trainable; a trainable without one has a zero gradient. Returns how many matched
 * trainables have `part` in their name (0 when part is NULL). */
static inline int64_t compare_grads(finch_model *m, const char *prefix, double factor, const char *label,
                                    const char *part)
{
    int64_t nt = finch_trainable_count(m), matched = 0, with_part = 0;
    double worst = 0;
    char worst_name[300] = "";
    for (int64_t i = 0; i < nt; i++) {
        finch_tensor_info ti;
        if (!ok(finch_trainable_info(m, i, &ti), "finch_trainable_info")) return 0;
        float *got = malloc((size_t)ti.numel * sizeof(float));
        ok(finch_trainable_grad_read(m, i, got, ti.numel), "finch_trainable_grad_read");
        char name[400];
        snprintf(name, sizeof name, "%s%s", prefix, ti.name);
        int64_t n = 0;
        float *ref = gold_f32(name, &n);
        if (!ref) {
            double s = 0;
            for (int64_t j = 0; j < ti.numel; j++) s += fabs(got[j]);
            CHECK(s == 0, "%s: no golden gradient for %s, and ours is not zero", label, ti.name);
        } else {
            CHECK(n == ti.numel, "%s: %s has %lld elements, golden %lld", label, ti.name, (long long)ti.numel,
                  (long long)n);
            for (int64_t j = 0; j < n; j++) ref[j] = (float)(ref[j] * factor);
            double e = n == ti.numel ? testing_rel_err(got, ref, (size_t)n) : 1.0;
            CHECK(e <= TOL, "%s: %s rel err %.3g", label, name, e);
            if (e > worst) {
                worst = e;
                snprintf(worst_name, sizeof worst_name, "%s", ti.name);
            }
            matched++;
            with_part += part && strstr(ti.name, part) != NULL;
        }
        free(ref);
        free(got);
    }
    int64_t golden = 0;
    size_t plen = strlen(prefix);
    for (int i = 0; i < st_set_count(gold); i++) golden += !strncmp(st_set_at(gold, i)->name, prefix, plen);
    CHECK(matched == golden && golden > 0, "%s: %lld of %lld golden gradients have a trainable of that name", label,
          (long long)matched, (long long)golden);
    printf("  %-44s %lld tensors, worst rel err %.2e (%s)\n", label, (long long)matched, worst, worst_name);
    return with_part;
}

/* Zeroed AdamW moments for each trainable of m on its backend (m, then v, in one f32 buffer). */
static inline finch_plugin_buffer **adamw_state(finch_model *m)
{
    const finch_backend *be = m->be;
    finch_plugin_buffer **state = calloc((size_t)m->n_trainables + 1, sizeof *state);
    for (int i = 0; state && i < m->n_trainables; i++) {
        int64_t n = m->trainables[i].param->numel;
        ok(be->api->alloc(be->dev, (size_t)(2 * n) * 4, &state[i]), "AdamW state");
        if (state[i])
            ok(be->api->fill(be->dev, be->stream, (finch_dptr){state[i], 0}, FINCH_DTYPE_F32, 2 * n, 0.0f), "fill");
    }
    return state;
}

static inline void adamw_state_free(finch_model *m, finch_plugin_buffer **state)
{
    for (int i = 0; state && i < m->n_trainables; i++)
        if (state[i]) m->be->api->free(m->be->dev, state[i]);
    free(state);
}

/* torch.optim.AdamW step number `step` (lr 1e-2, betas 0.9, 0.999, eps 1e-8) on every trainable, through
 * the plugin's adamw_step. */
static inline void adamw_step_all(finch_model *m, finch_plugin_buffer **state, int step, float weight_decay)
{
    const finch_backend *be = m->be;
    for (int i = 0; i < m->n_trainables; i++) {
        finch_param *p = m->trainables[i].param;
        finch_adamw_desc d;
        memset(&d, 0, sizeof d);
        d.n = p->numel;
        d.param_type = p->dtype;
        d.param = p->data;
        d.grad = p->grad;
        d.m = (finch_dptr){state[i], 0};
        d.v = (finch_dptr){state[i], (size_t)p->numel * 4};
        d.lr = 1e-2f;
        d.beta1 = 0.9f;
        d.beta2 = 0.999f;
        d.eps = 1e-8f;
        d.weight_decay = weight_decay;
        d.grad_scale = 1.0f;
        d.bias_correction1 = 1.0f - powf(0.9f, (float)step);
        d.bias_correction2 = 1.0f - powf(0.999f, (float)step);
        ok(be->api->adamw_step(be->dev, be->stream, &d), "adamw_step");
    }
}

#endif
