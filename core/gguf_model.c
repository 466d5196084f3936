#include "core/gguf_model.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *arch_name(finch_arch a)
{
    switch (a) {
    case FINCH_ARCH_LLAMA: case FINCH_ARCH_MISTRAL: return "llama";
    case FINCH_ARCH_QWEN2: return "qwen2";
    case FINCH_ARCH_QWEN3: return "qwen3";
    case FINCH_ARCH_GEMMA: return "gemma";
    case FINCH_ARCH_GEMMA2: return "gemma2";
    case FINCH_ARCH_GEMMA3: return "gemma3";
    case FINCH_ARCH_PHI3: return "phi3";
    case FINCH_ARCH_FALCON: return "falcon";
    }
    return NULL;
}

static int is_gemma(finch_arch a)
{
    return a == FINCH_ARCH_GEMMA || a == FINCH_ARCH_GEMMA2 || a == FINCH_ARCH_GEMMA3;
}

/* llama.cpp's name of a linear module of a layer ("attn_q"), or NULL. */
static const char *linear_name(const finch_layer *ly, const finch_linear_module *lin)
{
    if (lin == &ly->q) return "attn_q";
    if (lin == &ly->k) return "attn_k";
    if (lin == &ly->v) return "attn_v";
    if (lin == &ly->qkv) return "attn_qkv";
    if (lin == &ly->o) return "attn_output";
    if (lin == &ly->gate) return "ffn_gate";
    if (lin == &ly->up || lin == &ly->gate_up) return "ffn_up";
    if (lin == &ly->down) return "ffn_down";
    return NULL;
}

static const char *norm_name(const finch_model *m, const finch_layer *ly, const finch_param *p, const char **suffix)
{
    *suffix = "weight";
    if (p == &ly->attn_norm_b || p == &ly->mlp_norm_b) *suffix = "bias";
    if (p == &ly->attn_norm || p == &ly->attn_norm_b) return "attn_norm";
    if (p == &ly->mlp_norm || p == &ly->mlp_norm_b) return m->cfg.arch == FINCH_ARCH_FALCON ? "attn_norm_2" : "ffn_norm";
    if (p == &ly->post_attn_norm) return "post_attention_norm";
    if (p == &ly->post_ffn_norm) return "post_ffw_norm";
    if (p == &ly->q_norm) return "attn_q_norm";
    if (p == &ly->k_norm) return "attn_k_norm";
    return NULL;
}

/* The GGUF name of a checkpoint tensor and the layer it belongs to (-1: none). */
static int tensor_name(const finch_model *m, const finch_model_tensor *t, char *out, size_t size, int *layer)
{
    *layer = -1;
    const finch_param *p = t->param;
    if (p == &m->embed) return snprintf(out, size, "token_embd.weight"), FINCH_OK;
    if (p == &m->final_norm) return snprintf(out, size, "output_norm.weight"), FINCH_OK;
    if (p == &m->final_norm_b) return snprintf(out, size, "output_norm.bias"), FINCH_OK;
    if (p == &m->lm_head_own) return snprintf(out, size, "output.weight"), FINCH_OK;
    for (int64_t l = 0; l < m->cfg.n_layers; l++) {
        const finch_layer *ly = &m->layers[l];
        const char *base = NULL, *suffix = "weight";
        if (t->lin) {
            base = linear_name(ly, t->lin);
            suffix = t->kind == FINCH_WEIGHT_LINEAR_BIAS ? "bias" : "weight";
        } else {
            base = norm_name(m, ly, p, &suffix);
        }
        if (base) {
            *layer = (int)l;
            snprintf(out, size, "blk.%lld.%s.%s", (long long)l, base, suffix);
            return FINCH_OK;
        }
    }
    return finch_error(FINCH_ERR_UNSUPPORTED, "GGUF export: tensor '%s' has no llama.cpp name", t->name);
}

/* llama.cpp's converter turns HF's rotate-half q/k rows into interleaved pairs: per head, row
 * 2i + j of the GGUF tensor is row j * head_dim/2 + i of the checkpoint. */
static int32_t *qk_perm(int64_t heads, int64_t head_dim)
{
    int32_t *p = malloc((size_t)(heads * head_dim) * sizeof *p);
    if (!p) return NULL;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < head_dim / 2; i++)
            for (int64_t j = 0; j < 2; j++) p[h * head_dim + 2 * i + j] = (int32_t)(h * head_dim + j * (head_dim / 2) + i);
    return p;
}

/* The row order of a linear's GGUF tensors (weight, bias, lora_b). */
static int linear_rows(const finch_model *m, const finch_linear_module *lin, int32_t **perm, int *own)
{
    *perm = NULL;
    *own = 0;
    const finch_model_config *c = &m->cfg;
    if (c->arch == FINCH_ARCH_FALCON) {  /* llama.cpp wants [q heads | k heads | v heads]: our own order */
        *perm = lin->row_perm;
        return FINCH_OK;
    }
    if (c->arch != FINCH_ARCH_LLAMA && c->arch != FINCH_ARCH_MISTRAL) return FINCH_OK;
    for (int64_t l = 0; l < c->n_layers; l++) {
        if (lin == &m->layers[l].q || lin == &m->layers[l].k) {
            *perm = qk_perm(lin == &m->layers[l].q ? c->n_heads : c->n_kv_heads, c->head_dim);
            if (!*perm) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
            *own = 1;
        }
    }
    return FINCH_OK;
}

/* llama.cpp's rule for the layers that get more bits in the _M mixes: the first and last eighth and
 * every third layer between. */
static int more_bits(int layer, int n_layers)
{
    return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

static int with_fallback(int type, int64_t ne0)
{
    if (gguf_block_elems(type) == 256 && ne0 % 256) type = GGML_Q8_0; /* llama.cpp also falls back for such rows */
    if (gguf_block_elems(type) == 32 && ne0 % 32) type = GGML_F16;
    return type;
}

static int pick_type(finch_gguf_type mix, const char *name, int n_dims, int64_t cols, int layer, int n_layers, int tied)
{
    if (n_dims == 1) return GGML_F32;
    int output = !strcmp(name, "output.weight") || (tied && !strcmp(name, "token_embd.weight"));
    int t;
    switch (mix) {
    case FINCH_GGUF_F32: return GGML_F32;
    case FINCH_GGUF_F16: return GGML_F16;
    case FINCH_GGUF_BF16: return GGML_BF16;
    case FINCH_GGUF_Q8_0: t = GGML_Q8_0; break;
    case FINCH_GGUF_Q4_0: t = output ? GGML_Q6_K : GGML_Q4_0; break;
    case FINCH_GGUF_Q6_K: t = GGML_Q6_K; break;
    case FINCH_GGUF_Q4_K_M:
    case FINCH_GGUF_Q5_K_M: {
        int base = mix == FINCH_GGUF_Q4_K_M ? GGML_Q4_K : GGML_Q5_K;
        if (output) t = GGML_Q6_K;
        else if (strstr(name, ".attn_qkv.")) t = mix == FINCH_GGUF_Q4_K_M ? GGML_Q5_K : GGML_Q6_K;
        else if ((strstr(name, ".attn_v.") || strstr(name, ".ffn_down.")) && layer >= 0 && more_bits(layer, n_layers)) t = GGML_Q6_K;
        else t = base;
        break;
    }
    default: t = GGML_F32;
    }
    return with_fallback(t, cols);
}

/* A new zeroed entry; NULL (with the error set) when out of memory. */
static gguf_plan_tensor *push(gguf_plan *p)
{
    gguf_plan_tensor *t = realloc(p->t, (size_t)(p->n + 1) * sizeof *t);
    if (!t) {
        finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        return NULL;
    }
    p->t = t;
    return memset(&t[p->n++], 0, sizeof *t);
}

void gguf_plan_free(gguf_plan *p)
{
    for (int i = 0; i < p->n; i++) {
        if (p->t[i].own_perm) free(p->t[i].perm);
        free(p->t[i].host);
    }
    free(p->t);
    free(p->src);
    memset(p, 0, sizeof *p);
}

static int check_supported(const finch_model *m, const char **arch)
{
    const finch_model_config *c = &m->cfg;
    *arch = arch_name(c->arch);
    if (!*arch) return finch_error(FINCH_ERR_UNSUPPORTED, "GGUF export: model_type '%s' has no llama.cpp architecture", c->model_type);
    if (c->arch == FINCH_ARCH_FALCON && !c->parallel_attn)
        return finch_error(FINCH_ERR_UNSUPPORTED, "GGUF export: llama.cpp's falcon needs parallel_attn (this model has sequential attention)");
    if (is_gemma(c->arch) && !m->tied)
        return finch_error(FINCH_ERR_UNSUPPORTED, "GGUF export: llama.cpp's %s ties lm_head to the embeddings; this model has its own lm_head", *arch);
    for (int g = 0; g < 1 + c->has_local_rope; g++) {
        const finch_rope_config *r = g ? &c->rope_local : &c->rope_global;
        if (r->type == FINCH_ROPE_YARN || r->type == FINCH_ROPE_LONGROPE)
            return finch_error(FINCH_ERR_UNSUPPORTED, "GGUF export: %s RoPE scaling is not exported (default, linear and llama3 are)",
                               r->type == FINCH_ROPE_YARN ? "yarn" : "longrope");
        if (r->type == FINCH_ROPE_LLAMA3 && c->arch != FINCH_ARCH_LLAMA && c->arch != FINCH_ARCH_MISTRAL)
            return finch_error(FINCH_ERR_UNSUPPORTED, "GGUF export: llama3 RoPE scaling is exported for llama models only");
    }
    return FINCH_OK;
}

/* The base frequencies theta^(-2i/d) over the model's (scaled) ones: llama.cpp's rope_freqs factors. */
static int rope_factors(const finch_rope_config *r, float **out)
{
    int64_t half = r->rot_dim / 2;
    float *f = malloc((size_t)half * sizeof *f);
    if (!f) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int64_t i = 0; i < half; i++) f[i] = (float)((1.0 / pow(r->theta, (double)(2 * i) / (double)r->rot_dim)) / r->inv_freq[i]);
    *out = f;
    return FINCH_OK;
}

int gguf_plan_model(const finch_model *m, finch_gguf_type type, gguf_plan *p)
{
    memset(p, 0, sizeof *p);
    int rc = check_supported(m, &p->arch);
    if (!rc) rc = finch_model_tensors(m, &p->src, &p->n_src);
    for (int i = 0; !rc && i < p->n_src; i++) {
        const finch_model_tensor *s = &p->src[i];
        gguf_plan_tensor *t = push(p);
        int layer;
        if (!t) {
            rc = FINCH_ERR_OUT_OF_MEMORY;
            break;
        }
        t->src = s;
        t->part = GGUF_PART_WEIGHT;
        t->n_dims = s->ndim;
        t->rows = s->shape[0];  /* a 1-D tensor is a column, so a row order applies to a bias too */
        t->cols = s->ndim > 1 ? s->shape[1] : 1;
        if ((rc = tensor_name(m, s, t->name, sizeof t->name, &layer))) break;
        if (s->lin) rc = linear_rows(m, s->lin, &t->perm, &t->own_perm);
        if (is_gemma(m->cfg.arch) && !s->lin && s->param != &m->embed) t->add = 1.0f;
        t->type = pick_type(type, t->name, t->n_dims, t->cols, layer, (int)m->cfg.n_layers, m->tied);
    }
    const finch_rope_config *r = &m->cfg.rope_global;
    if (!rc && r->type == FINCH_ROPE_LLAMA3) {
        gguf_plan_tensor *t = push(p);
        if (!t) {
            rc = FINCH_ERR_OUT_OF_MEMORY;
        } else {
            snprintf(t->name, sizeof t->name, "rope_freqs.weight");
            t->n_dims = 1;
            t->rows = r->rot_dim / 2;
            t->cols = 1;
            t->type = GGML_F32;
            rc = rope_factors(r, &t->host);
        }
    }
    if (rc) gguf_plan_free(p);
    return rc;
}

int gguf_plan_adapter(const finch_model *m, finch_gguf_type type, gguf_plan *p)
{
    memset(p, 0, sizeof *p);
    p->is_adapter = 1;
    if (!m->lora_attached) return finch_error(FINCH_ERR_STATE, "GGUF LoRA export: no adapter is attached");
    if (type != FINCH_GGUF_F32 && type != FINCH_GGUF_F16 && type != FINCH_GGUF_BF16 && type != FINCH_GGUF_Q8_0)
        return finch_error(FINCH_ERR_UNSUPPORTED, "GGUF LoRA export: type %s (llama.cpp adapters are f32, f16, bf16 or q8_0)",
                           finch_gguf_type_name(type));
    int rc = check_supported(m, &p->arch);
    if (!rc) rc = finch_model_tensors(m, &p->src, &p->n_src);
    for (int i = 0; !rc && i < p->n_src; i++) {
        const finch_model_tensor *s = &p->src[i];
        if (s->kind != FINCH_WEIGHT_LINEAR || !s->lin->rank) continue;
        char base[GGUF_MAX_NAME + 1];
        int layer;
        if ((rc = tensor_name(m, s, base, sizeof base, &layer))) break;
        for (int part = GGUF_PART_LORA_A; !rc && part <= GGUF_PART_LORA_B; part++) {
            gguf_plan_tensor *t = push(p);
            if (!t) {
                rc = FINCH_ERR_OUT_OF_MEMORY;
                break;
            }
            t->src = s;
            t->part = part;
            t->n_dims = 2;
            if (snprintf(t->name, sizeof t->name, "%s.lora_%s", base, part == GGUF_PART_LORA_A ? "a" : "b") >= (int)sizeof t->name)
                rc = finch_error(FINCH_ERR_UNSUPPORTED, "GGUF LoRA export: name too long for %s", s->name);
            t->rows = part == GGUF_PART_LORA_A ? s->lin->rank : s->lin->out_features;
            t->cols = part == GGUF_PART_LORA_A ? s->lin->in_features : s->lin->rank;
            if (!rc && part == GGUF_PART_LORA_B) rc = linear_rows(m, s->lin, &t->perm, &t->own_perm);
            t->type = pick_type(type, t->name, t->n_dims, t->cols, layer, (int)m->cfg.n_layers, 0);
        }
    }
    if (!rc && p->n == 0) rc = finch_error(FINCH_ERR_STATE, "GGUF LoRA export: the adapter covers no linear layer");
    if (rc) gguf_plan_free(p);
    return rc;
}

/* ---- values --------------------------------------------------------------------------------------- */

int gguf_plan_values(const finch_model *m, const gguf_plan_tensor *t, float *dst)
{
    int64_t n = t->rows * t->cols;
    if (t->host) {
        memcpy(dst, t->host, (size_t)n * sizeof(float));
        return FINCH_OK;
    }
    float *ck = malloc((size_t)n * sizeof(float) + 1), *other = NULL;
    if (!ck) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc;
    if (t->part == GGUF_PART_WEIGHT) {
        rc = finch_model_tensor_f32(m, t->src, 1, ck);
    } else {
        const finch_linear_module *lin = t->src->lin;
        size_t other_n = t->part == GGUF_PART_LORA_A ? (size_t)(lin->out_features * lin->rank) : (size_t)(lin->rank * lin->in_features);
        other = malloc(other_n * sizeof(float) + 1);
        rc = other ? (t->part == GGUF_PART_LORA_A ? finch_lora_factors_f32(m, lin, ck, other) : finch_lora_factors_f32(m, lin, other, ck))
                   : finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    if (!rc) {
        for (int64_t r = 0; r < t->rows; r++) {
            const float *src = ck + (t->perm ? (int64_t)t->perm[r] : r) * t->cols;
            float *d = dst + r * t->cols;
            for (int64_t c = 0; c < t->cols; c++) d[c] = src[c] + t->add;
        }
    }
    free(ck);
    free(other);
    return rc;
}

void gguf_plan_unapply(const gguf_plan_tensor *t, const float *stored, float *dst)
{
    for (int64_t r = 0; r < t->rows; r++) {
        float *d = dst + (t->perm ? (int64_t)t->perm[r] : r) * t->cols;
        const float *s = stored + r * t->cols;
        for (int64_t c = 0; c < t->cols; c++) d[c] = s[c] - t->add;
    }
}

/* ---- keys ----------------------------------------------------------------------------------------- */

static uint32_t file_type(finch_gguf_type t)
{
    switch (t) {
    case FINCH_GGUF_F32: return 0;
    case FINCH_GGUF_F16: return 1;
    case FINCH_GGUF_Q4_0: return 2;
    case FINCH_GGUF_Q8_0: return 7;
    case FINCH_GGUF_Q4_K_M: return 15;
    case FINCH_GGUF_Q5_K_M: return 17;
    case FINCH_GGUF_Q6_K: return 18;
    case FINCH_GGUF_BF16: return 32;
    }
    return 0;
}

int gguf_plan_keys(const finch_model *m, const gguf_plan *p, finch_gguf_type type, const char *name, gguf_writer *w)
{
    const finch_model_config *c = &m->cfg;
    const char *a = p->arch;
    char k[128];
    int rc = gguf_set_str(w, "general.architecture", a);
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", a, suffix), k)
    if (!rc) rc = gguf_set_str(w, "general.type", p->is_adapter ? "adapter" : "model");
    if (!rc && name) rc = gguf_set_str(w, "general.name", name);
    if (!rc) rc = gguf_set_u32(w, "general.alignment", GGUF_ALIGNMENT);
    if (p->is_adapter) {
        /* llama.cpp scales by alpha / rank, rank read from the tensors; our scale may be rsLoRA's */
        const finch_linear_module *lin = p->t[0].src->lin;
        if (!rc) rc = gguf_set_str(w, "adapter.type", "lora");
        if (!rc) rc = gguf_set_f32(w, "adapter.lora.alpha", lin->scale * (float)lin->rank);
        return rc;
    }
    int quantized = 0;
    for (int i = 0; i < p->n; i++) quantized |= p->t[i].type != GGML_F32 && p->t[i].type != GGML_F16 && p->t[i].type != GGML_BF16;
    if (!rc) rc = gguf_set_u32(w, "general.file_type", file_type(type));
    if (!rc && quantized) rc = gguf_set_u32(w, "general.quantization_version", 2);
    if (!rc) rc = gguf_set_u32(w, KEY("vocab_size"), (uint32_t)c->vocab);
    if (!rc) rc = gguf_set_u32(w, KEY("context_length"), (uint32_t)c->max_positions);
    if (!rc) rc = gguf_set_u32(w, KEY("embedding_length"), (uint32_t)c->hidden);
    if (!rc) rc = gguf_set_u32(w, KEY("block_count"), (uint32_t)c->n_layers);
    if (!rc) rc = gguf_set_u32(w, KEY("feed_forward_length"), (uint32_t)c->intermediate);
    if (!rc) rc = gguf_set_u32(w, KEY("attention.head_count"), (uint32_t)c->n_heads);
    if (!rc) rc = gguf_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_kv_heads);
    if (!rc) rc = gguf_set_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim);
    if (!rc) rc = gguf_set_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim);
    if (!rc) rc = gguf_set_f32(w, KEY(c->norm_kind == FINCH_NORM_LAYER ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon"),
                               (float)c->norm_eps);
    const finch_rope_config *r = &c->rope_global;
    if (!rc) rc = gguf_set_f32(w, KEY("rope.freq_base"), (float)r->theta);
    if (!rc) rc = gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)r->rot_dim);
    if (!rc && r->type == FINCH_ROPE_LINEAR) {
        float base0 = 1.0f;  /* theta^0: the first frequency is 1 before scaling */
        if (!(rc = gguf_set_str(w, KEY("rope.scaling.type"), "linear"))) rc = gguf_set_f32(w, KEY("rope.scaling.factor"), base0 / r->inv_freq[0]);
    }
    if (!rc && c->has_local_rope) rc = gguf_set_f32(w, KEY("rope.freq_base_swa"), (float)c->rope_local.theta);
    if (!rc && c->sliding_window > 0 && (c->arch == FINCH_ARCH_GEMMA2 || c->arch == FINCH_ARCH_GEMMA3 || c->arch == FINCH_ARCH_PHI3))
        rc = gguf_set_u32(w, KEY("attention.sliding_window"), (uint32_t)c->sliding_window);
    if (!rc && c->arch == FINCH_ARCH_GEMMA2) {
        if (!(rc = gguf_set_f32(w, KEY("attn_logit_softcapping"), c->attn_softcap)))
            rc = gguf_set_f32(w, KEY("final_logit_softcapping"), c->final_softcap);
    }
    if (!rc && c->arch == FINCH_ARCH_GEMMA3 && c->final_softcap > 0) rc = gguf_set_f32(w, KEY("final_logit_softcapping"), c->final_softcap);
#undef KEY
    return rc;
}
