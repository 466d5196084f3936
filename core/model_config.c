#include "core/model_config.h"
#include "core/error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Field access with messages that name the file and the field. JSON null reads as absent. */
typedef struct json_ctx {
    const char *path;
} json_ctx;

static const cJSON *field(const cJSON *obj, const char *key)
{
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

static int get_double(const json_ctx *c, const cJSON *obj, const char *prefix, const char *key, int required,
                      double dflt, double *out)
{
    const cJSON *v = field(obj, key);
    if (!v) {
        if (required) return finch_error(FINCH_ERR_FORMAT, "%s: missing field '%s%s'", c->path, prefix, key);
        *out = dflt;
        return FINCH_OK;
    }
    if (!cJSON_IsNumber(v))
        return finch_error(FINCH_ERR_FORMAT, "%s: field '%s%s' must be a number", c->path, prefix, key);
    *out = v->valuedouble;
    return FINCH_OK;
}

static int get_int(const json_ctx *c, const cJSON *obj, const char *key, int required, int64_t dflt, int64_t *out)
{
    double d = 0;
    int rc = get_double(c, obj, "", key, required, (double)dflt, &d);
    if (rc) return rc;
    if (d != floor(d) || fabs(d) > 9e15)
        return finch_error(FINCH_ERR_FORMAT, "%s: field '%s' must be an integer", c->path, key);
    *out = (int64_t)d;
    return FINCH_OK;
}

static int get_positive(const json_ctx *c, const cJSON *obj, const char *key, int required, int64_t dflt, int64_t *out)
{
    int rc = get_int(c, obj, key, required, dflt, out);
    if (rc) return rc;
    if (*out <= 0) return finch_error(FINCH_ERR_FORMAT, "%s: field '%s' must be positive (is %lld)", c->path, key, (long long)*out);
    return FINCH_OK;
}

static int get_bool(const json_ctx *c, const cJSON *obj, const char *key, int dflt, int *out)
{
    const cJSON *v = field(obj, key);
    if (!v) {
        *out = dflt;
        return FINCH_OK;
    }
    if (!cJSON_IsBool(v)) return finch_error(FINCH_ERR_FORMAT, "%s: field '%s' must be true or false", c->path, key);
    *out = cJSON_IsTrue(v);
    return FINCH_OK;
}

static int get_string(const json_ctx *c, const cJSON *obj, const char *prefix, const char *key, const char **out)
{
    const cJSON *v = field(obj, key);
    *out = NULL;
    if (!v) return FINCH_OK;
    if (!cJSON_IsString(v)) return finch_error(FINCH_ERR_FORMAT, "%s: field '%s%s' must be a string", c->path, prefix, key);
    *out = v->valuestring;
    return FINCH_OK;
}

/* ---- RoPE ------------------------------------------------------------------------------------ */

/* Where RoPE settings live: a transformers-5 rope_parameters object (or one per layer type), or a
 * transformers-4 rope_scaling object with rope_theta and partial_rotary_factor beside it. */
typedef struct rope_source {
    const cJSON *params;       /* rope_parameters[...] or rope_scaling; may be NULL */
    const cJSON *text;         /* the text config, for fields transformers 4 keeps at top level */
    const char *prefix;        /* for messages: "rope_parameters." ... */
    double theta_default;
} rope_source;

static int rope_num(const json_ctx *c, const rope_source *s, const char *key, int required, double dflt, double *out)
{
    if (field(s->params, key)) return get_double(c, s->params, s->prefix, key, 0, dflt, out);
    if (field(s->text, key)) return get_double(c, s->text, "", key, 0, dflt, out);
    return get_double(c, s->params, s->prefix, key, required, dflt, out);
}

static int rope_factors(const json_ctx *c, const rope_source *s, const char *key, int64_t n, double **out)
{
    const cJSON *v = field(s->params, key);
    if (!v) return finch_error(FINCH_ERR_FORMAT, "%s: missing field '%s%s' (longrope)", c->path, s->prefix, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return finch_error(FINCH_ERR_FORMAT, "%s: field '%s%s' must be a list of %lld numbers", c->path, s->prefix, key,
                           (long long)n);
    double *f = malloc((size_t)n * sizeof *f);
    if (!f) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    int64_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e)) {
            free(f);
            return finch_error(FINCH_ERR_FORMAT, "%s: field '%s%s' must hold numbers", c->path, s->prefix, key);
        }
        f[i++] = e->valuedouble;
    }
    *out = f;
    return FINCH_OK;
}

static double yarn_mscale(double scale, double mscale)
{
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

static double yarn_correction_dim(double rotations, int64_t dim, double base, double max_pos)
{
    return ((double)dim * log(max_pos / (rotations * 2.0 * M_PI))) / (2.0 * log(base));
}

static int parse_rope(const json_ctx *c, const rope_source *s, int64_t head_dim, int64_t max_positions,
                      finch_rope_config *r)
{
    memset(r, 0, sizeof *r);
    const char *type = NULL;
    int rc = get_string(c, s->params, s->prefix, "rope_type", &type);
    if (!rc && !type) rc = get_string(c, s->params, s->prefix, "type", &type);
    if (rc) return rc;
    /* "mrope" (transformers 4 Qwen2-VL configs) is default RoPE with multimodal sections. */
    if (!type || !strcmp(type, "default") || !strcmp(type, "mrope")) r->type = FINCH_ROPE_DEFAULT;
    else if (!strcmp(type, "linear")) r->type = FINCH_ROPE_LINEAR;
    else if (!strcmp(type, "llama3")) r->type = FINCH_ROPE_LLAMA3;
    else if (!strcmp(type, "yarn")) r->type = FINCH_ROPE_YARN;
    else if (!strcmp(type, "longrope") || !strcmp(type, "su")) r->type = FINCH_ROPE_LONGROPE;
    else
        return finch_error(FINCH_ERR_UNSUPPORTED,
                           "%s: RoPE type '%s' (field '%srope_type') is not supported; supported: default, linear, "
                           "llama3, yarn, longrope",
                           c->path, type, s->prefix);

    double prf = 1;
    if ((rc = rope_num(c, s, "rope_theta", 0, s->theta_default, &r->theta)) ||
        (rc = rope_num(c, s, "partial_rotary_factor", 0, 1.0, &prf)))
        return rc;
    if (!(r->theta > 0)) return finch_error(FINCH_ERR_FORMAT, "%s: field '%srope_theta' must be positive", c->path, s->prefix);
    if (!(prf > 0 && prf <= 1))
        return finch_error(FINCH_ERR_FORMAT, "%s: field 'partial_rotary_factor' must be in (0, 1]", c->path);
    int64_t dim = (int64_t)((double)head_dim * prf);
    if (dim < 2 || dim % 2)
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: rotary dimension %lld (head_dim %lld x partial_rotary_factor %g) must be even",
                           c->path, (long long)dim, (long long)head_dim, prf);
    r->rot_dim = dim;
    int64_t half = dim / 2;
    r->inv_freq = malloc((size_t)half * sizeof(float));
    if (!r->inv_freq) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    r->attn_factor = 1.0f;
    double base = r->theta;
    /* HF computes the base frequencies in float32: base ** (2i / dim). */
    double f[4096];
    if (half > 4096) return finch_error(FINCH_ERR_UNSUPPORTED, "%s: head_dim %lld too large", c->path, (long long)head_dim);
    for (int64_t i = 0; i < half; i++) f[i] = 1.0 / pow(base, (double)(2 * i) / (double)dim);

    switch (r->type) {
    case FINCH_ROPE_DEFAULT:
        break;
    case FINCH_ROPE_LINEAR: {
        double factor;
        if ((rc = rope_num(c, s, "factor", 1, 1.0, &factor))) return rc;
        if (!(factor > 0)) return finch_error(FINCH_ERR_FORMAT, "%s: field '%sfactor' must be positive", c->path, s->prefix);
        for (int64_t i = 0; i < half; i++) f[i] /= factor;
        break;
    }
    case FINCH_ROPE_LLAMA3: {
        double factor = 0, lo = 0, hi = 0, old_ctx = 0;
        if ((rc = rope_num(c, s, "factor", 1, 0, &factor)) || (rc = rope_num(c, s, "low_freq_factor", 1, 0, &lo)) ||
            (rc = rope_num(c, s, "high_freq_factor", 1, 0, &hi)) ||
            (rc = get_double(c, s->params, s->prefix, "original_max_position_embeddings", 1, 0, &old_ctx)))
            return rc;
        if (!(factor > 0) || !(hi > lo) || !(old_ctx > 0))
            return finch_error(FINCH_ERR_FORMAT, "%s: llama3 RoPE needs factor > 0 and high_freq_factor > low_freq_factor",
                               c->path);
        double low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
        for (int64_t i = 0; i < half; i++) {
            double wavelen = 2.0 * M_PI / f[i];
            if (wavelen > low_wavelen) {
                f[i] /= factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (old_ctx / wavelen - lo) / (hi - lo);
                f[i] = (1.0 - smooth) * f[i] / factor + smooth * f[i];
            }
        }
        break;
    }
    case FINCH_ROPE_YARN: {
        double factor = 1, attn = -1, mscale = 0, mscale_all = 0, beta_fast = 32, beta_slow = 1, orig = -1;
        int truncate = 1;
        if ((rc = rope_num(c, s, "factor", 0, -1.0, &factor)) ||
            (rc = get_double(c, s->params, s->prefix, "attention_factor", 0, -1, &attn)) ||
            (rc = get_double(c, s->params, s->prefix, "mscale", 0, 0, &mscale)) ||
            (rc = get_double(c, s->params, s->prefix, "mscale_all_dim", 0, 0, &mscale_all)) ||
            (rc = get_double(c, s->params, s->prefix, "beta_fast", 0, 32, &beta_fast)) ||
            (rc = get_double(c, s->params, s->prefix, "beta_slow", 0, 1, &beta_slow)) ||
            (rc = get_double(c, s->params, s->prefix, "original_max_position_embeddings", 0, -1, &orig)) ||
            (rc = get_bool(c, s->params, "truncate", 1, &truncate)))
            return rc;
        if (orig <= 0) orig = (double)max_positions;
        /* transformers 5: an explicit factor wins; without one it is the ratio of the context lengths. */
        if (factor <= 0) factor = (double)max_positions / orig;
        if (attn < 0) attn = (mscale != 0 && mscale_all != 0) ? yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
                                                                : yarn_mscale(factor, 1.0);
        double low = yarn_correction_dim(beta_fast, dim, base, orig), high = yarn_correction_dim(beta_slow, dim, base, orig);
        if (truncate) {
            low = floor(low);
            high = ceil(high);
        }
        if (low < 0) low = 0;
        if (high > (double)(dim - 1)) high = (double)(dim - 1);
        if (low == high) high += 0.001;
        for (int64_t i = 0; i < half; i++) {
            double ramp = ((double)i - low) / (high - low);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double extrapolation = 1.0 - ramp;
            double interp = f[i] / factor;
            f[i] = interp * (1.0 - extrapolation) + f[i] * extrapolation;
        }
        r->attn_factor = (float)attn;
        break;
    }
    case FINCH_ROPE_LONGROPE: {
        double *sf = NULL, *lf = NULL, attn = -1, orig = 0;
        if ((rc = rope_num(c, s, "original_max_position_embeddings", 0, (double)max_positions, &orig)) ||
            (rc = get_double(c, s->params, s->prefix, "attention_factor", 0, -1, &attn)))
            return rc;
        double factor = (double)max_positions / orig;
        if (!field(s->params, "original_max_position_embeddings") && !field(s->text, "original_max_position_embeddings")) {
            if ((rc = get_double(c, s->params, s->prefix, "factor", 0, 1.0, &factor))) return rc;
        }
        if (attn < 0) attn = factor <= 1.0 ? 1.0 : sqrt(1.0 + log(factor) / log(orig));
        if ((rc = rope_factors(c, s, "short_factor", half, &sf))) return rc;
        if ((rc = rope_factors(c, s, "long_factor", half, &lf))) {
            free(sf);
            return rc;
        }
        r->inv_freq_long = malloc((size_t)half * sizeof(float));
        if (!r->inv_freq_long) {
            free(sf);
            free(lf);
            return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
        }
        for (int64_t i = 0; i < half; i++) {
            r->inv_freq_long[i] = (float)(f[i] / lf[i]);
            f[i] /= sf[i];
        }
        free(sf);
        free(lf);
        r->attn_factor = r->attn_factor_long = (float)attn;
        r->long_after = (int64_t)orig;
        break;
    }
    }
    for (int64_t i = 0; i < half; i++) r->inv_freq[i] = (float)f[i];
    return FINCH_OK;
}

static void rope_free(finch_rope_config *r)
{
    free(r->inv_freq);
    free(r->inv_freq_long);
    r->inv_freq = r->inv_freq_long = NULL;
}

/* ---- the config ------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    finch_arch arch;
} known_types[] = {
    {"llama", FINCH_ARCH_LLAMA}, {"mistral", FINCH_ARCH_MISTRAL}, {"qwen2", FINCH_ARCH_QWEN2},
    {"qwen3", FINCH_ARCH_QWEN3}, {"gemma", FINCH_ARCH_GEMMA},     {"gemma2", FINCH_ARCH_GEMMA2},
    {"gemma3_text", FINCH_ARCH_GEMMA3}, {"gemma3", FINCH_ARCH_GEMMA3}, {"phi3", FINCH_ARCH_PHI3},
    {"falcon", FINCH_ARCH_FALCON}, {"qwen2_5_vl", FINCH_ARCH_QWEN2}, {"qwen2_5_vl_text", FINCH_ARCH_QWEN2},
};

static int parse_activation(const json_ctx *c, const char *key, const char *name, finch_activation *out)
{
    if (!strcmp(name, "silu") || !strcmp(name, "swish")) *out = FINCH_ACT_SILU;
    else if (!strcmp(name, "gelu") || !strcmp(name, "gelu_python")) *out = FINCH_ACT_GELU_ERF;
    else if (!strcmp(name, "gelu_pytorch_tanh") || !strcmp(name, "gelu_new") || !strcmp(name, "gelu_fast"))
        *out = FINCH_ACT_GELU_TANH;
    else if (!strcmp(name, "relu")) *out = FINCH_ACT_RELU;
    else
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: activation '%s' (field '%s') is not supported", c->path, name, key);
    return FINCH_OK;
}

static int read_file(const char *path, char **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return finch_error(FINCH_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 65536) {
            cap = cap ? cap * 2 : 65536;
            char *p = realloc(buf, cap + 1);
            if (!p) {
                free(buf);
                fclose(f);
                return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory reading %s", path);
            }
            buf = p;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return finch_error(FINCH_ERR_IO, "cannot read %s", path);
    }
    buf[len] = 0;
    *out = buf;
    return FINCH_OK;
}

static int parse_layer_types(const json_ctx *c, const cJSON *text, finch_model_config *cfg, int *found)
{
    const cJSON *lt = field(text, "layer_types");
    *found = 0;
    if (!lt) return FINCH_OK;
    if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != cfg->n_layers)
        return finch_error(FINCH_ERR_FORMAT, "%s: field 'layer_types' must list %lld layer types", c->path,
                           (long long)cfg->n_layers);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, lt) {
        if (!cJSON_IsString(e)) return finch_error(FINCH_ERR_FORMAT, "%s: field 'layer_types' must hold strings", c->path);
        if (!strcmp(e->valuestring, "sliding_attention")) cfg->layer_sliding[i] = 1;
        else if (!strcmp(e->valuestring, "full_attention")) cfg->layer_sliding[i] = 0;
        else
            return finch_error(FINCH_ERR_UNSUPPORTED, "%s: layer type '%s' (field 'layer_types') is not supported", c->path,
                               e->valuestring);
        i++;
    }
    *found = 1;
    return FINCH_OK;
}

/* mrope_section [t, h, w] (frequency pairs per position row) from rope_parameters or rope_scaling. */
static int parse_mrope_sections(const json_ctx *c, const cJSON *text, finch_model_config *cfg)
{
    const char *where = "rope_parameters.";
    const cJSON *src = field(text, "rope_parameters");
    if (!src || !field(src, "mrope_section")) {
        src = field(text, "rope_scaling");
        where = "rope_scaling.";
    }
    const cJSON *sec = src ? field(src, "mrope_section") : NULL;
    if (!sec) return FINCH_OK;
    int n = cJSON_IsArray(sec) ? cJSON_GetArraySize(sec) : -1;
    if (n < 1 || n > 4)
        return finch_error(FINCH_ERR_FORMAT, "%s: field '%smrope_section' must be a list of 1 to 4 integers", c->path, where);
    int64_t sum = 0, i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, sec) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble != floor(e->valuedouble) || e->valuedouble > 4096)
            return finch_error(FINCH_ERR_FORMAT, "%s: field '%smrope_section' must hold non-negative integers", c->path, where);
        cfg->rope_sections[i++] = (int)e->valuedouble;
        sum += (int64_t)e->valuedouble;
    }
    if (sum * 2 != cfg->rope_global.rot_dim)
        return finch_error(FINCH_ERR_FORMAT, "%s: field '%smrope_section' sums to %lld, but the rotary dimension %lld needs %lld",
                           c->path, where, (long long)sum, (long long)cfg->rope_global.rot_dim,
                           (long long)(cfg->rope_global.rot_dim / 2));
    cfg->rope_n_sections = n;
    return FINCH_OK;
}

static int parse_text_config(const json_ctx *c, const cJSON *root, const cJSON *text, finch_model_config *cfg)
{
    int rc;
    finch_arch a = cfg->arch;
    int falcon = a == FINCH_ARCH_FALCON;
    int gemma = a == FINCH_ARCH_GEMMA || a == FINCH_ARCH_GEMMA2 || a == FINCH_ARCH_GEMMA3;

    if ((rc = get_positive(c, text, "vocab_size", 1, 0, &cfg->vocab))) return rc;
    if (falcon) {
        /* Falcon's original configs name these n_embed, n_layer and n_head. */
        const char *h = field(text, "hidden_size") ? "hidden_size" : field(text, "n_embed") ? "n_embed" : "hidden_size";
        const char *l = field(text, "num_hidden_layers") ? "num_hidden_layers" : field(text, "n_layer") ? "n_layer" : "num_hidden_layers";
        const char *n = field(text, "num_attention_heads") ? "num_attention_heads" : field(text, "n_head") ? "n_head" : "num_attention_heads";
        if ((rc = get_positive(c, text, h, 1, 0, &cfg->hidden)) || (rc = get_positive(c, text, l, 1, 0, &cfg->n_layers)) ||
            (rc = get_positive(c, text, n, 1, 0, &cfg->n_heads)))
            return rc;
    } else if ((rc = get_positive(c, text, "hidden_size", 1, 0, &cfg->hidden)) ||
               (rc = get_positive(c, text, "num_hidden_layers", 1, 0, &cfg->n_layers)) ||
               (rc = get_positive(c, text, "num_attention_heads", 1, 0, &cfg->n_heads))) {
        return rc;
    }
    if (cfg->n_layers > 100000 || cfg->hidden > (1 << 20) || cfg->vocab > (1 << 24) || cfg->n_heads > cfg->hidden)
        return finch_error(FINCH_ERR_FORMAT, "%s: implausible sizes (hidden_size %lld, layers %lld, heads %lld, vocab %lld)",
                           c->path, (long long)cfg->hidden, (long long)cfg->n_layers, (long long)cfg->n_heads,
                           (long long)cfg->vocab);
    if ((rc = get_positive(c, text, "max_position_embeddings", 0, 2048, &cfg->max_positions))) return rc;
    int64_t default_head_dim = cfg->hidden / cfg->n_heads;
    if (!falcon && (rc = get_positive(c, text, "head_dim", 0, default_head_dim, &cfg->head_dim))) return rc;
    if (falcon) cfg->head_dim = default_head_dim;
    if (!field(text, "head_dim") && cfg->hidden % cfg->n_heads)
        return finch_error(FINCH_ERR_FORMAT, "%s: hidden_size %lld is not a multiple of num_attention_heads %lld", c->path,
                           (long long)cfg->hidden, (long long)cfg->n_heads);

    if (falcon) {
        int64_t ffn, kv;
        int bias, alibi;
        double n_ln = 1;
        if ((rc = get_positive(c, text, "ffn_hidden_size", 0, 4 * cfg->hidden, &ffn)) ||
            (rc = get_bool(c, text, "parallel_attn", 1, &cfg->parallel_attn)) ||
            (rc = get_bool(c, text, "new_decoder_architecture", 0, &cfg->new_decoder_arch)) ||
            (rc = get_bool(c, text, "multi_query", 1, &cfg->multi_query)) ||
            (rc = get_positive(c, text, "num_kv_heads", 0, cfg->n_heads, &kv)) ||
            (rc = get_bool(c, text, "bias", 0, &bias)) || (rc = get_bool(c, text, "alibi", 0, &alibi)) ||
            (rc = get_double(c, text, "", "num_ln_in_parallel_attn", 0, cfg->new_decoder_arch ? 2 : 1, &n_ln)) ||
            (rc = get_double(c, text, "", "layer_norm_epsilon", 0, 1e-5, &cfg->norm_eps)))
            return rc;
        if (alibi) return finch_error(FINCH_ERR_UNSUPPORTED, "%s: Falcon with alibi (field 'alibi') is not supported", c->path);
        if (cfg->new_decoder_arch && !cfg->parallel_attn)
            return finch_error(FINCH_ERR_UNSUPPORTED, "%s: Falcon new_decoder_architecture without parallel_attn is not supported",
                               c->path);
        if (n_ln != 1 && n_ln != 2)
            return finch_error(FINCH_ERR_FORMAT, "%s: field 'num_ln_in_parallel_attn' must be 1 or 2", c->path);
        cfg->n_ln_parallel = (int)n_ln;
        cfg->intermediate = ffn;
        cfg->n_kv_heads = cfg->new_decoder_arch ? kv : cfg->multi_query ? 1 : cfg->n_heads;
        cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = bias;
        cfg->norm_kind = FINCH_NORM_LAYER;
        const char *act = NULL;
        if ((rc = get_string(c, text, "", "activation", &act))) return rc;
        if ((rc = parse_activation(c, "activation", act ? act : "gelu", &cfg->act))) return rc;
    } else {
        if ((rc = get_positive(c, text, "intermediate_size", 1, 0, &cfg->intermediate)) ||
            (rc = get_positive(c, text, "num_key_value_heads", 0, cfg->n_heads, &cfg->n_kv_heads)) ||
            (rc = get_double(c, text, "", "rms_norm_eps", 0, 1e-6, &cfg->norm_eps)))
            return rc;
        const char *act = NULL, *key = "hidden_activation";
        if ((rc = get_string(c, text, "", key, &act))) return rc;
        if (!act) {
            key = "hidden_act";
            if ((rc = get_string(c, text, "", key, &act))) return rc;
        }
        if ((rc = parse_activation(c, key, act ? act : gemma ? "gelu_pytorch_tanh" : "silu", &cfg->act))) return rc;
        int attention_bias = 0, mlp_bias = 0;
        if ((rc = get_bool(c, text, "attention_bias", 0, &attention_bias)) || (rc = get_bool(c, text, "mlp_bias", 0, &mlp_bias)))
            return rc;
        cfg->qkv_bias = cfg->o_bias = attention_bias;
        cfg->mlp_bias = a == FINCH_ARCH_LLAMA ? mlp_bias : 0;
        if (a == FINCH_ARCH_QWEN2) {
            cfg->qkv_bias = 1;
            cfg->o_bias = 0;
        }
        if (a == FINCH_ARCH_MISTRAL || a == FINCH_ARCH_PHI3) cfg->qkv_bias = cfg->o_bias = 0;
    }
    if (cfg->n_heads % cfg->n_kv_heads)
        return finch_error(FINCH_ERR_FORMAT, "%s: num_attention_heads %lld is not a multiple of the %lld key/value heads",
                           c->path, (long long)cfg->n_heads, (long long)cfg->n_kv_heads);

    int tie = -1;
    const cJSON *tie_obj = field(text, "tie_word_embeddings") ? text : field(root, "tie_word_embeddings") ? root : NULL;
    if (tie_obj && (rc = get_bool(c, tie_obj, "tie_word_embeddings", 0, &tie))) return rc;
    cfg->tie_embeddings = tie;

    cfg->norm_offset = gemma ? 1.0f : 0.0f;
    cfg->scale_embeddings = gemma;
    cfg->qk_norm = a == FINCH_ARCH_QWEN3 || a == FINCH_ARCH_GEMMA3;
    cfg->sandwich_norms = a == FINCH_ARCH_GEMMA2 || a == FINCH_ARCH_GEMMA3;
    cfg->attn_scale = (float)(1.0 / sqrt((double)cfg->head_dim));
    if (a == FINCH_ARCH_GEMMA2 || a == FINCH_ARCH_GEMMA3) {
        double qpas = 256, softcap = 0, final_softcap = 0;
        if ((rc = get_double(c, text, "", "query_pre_attn_scalar", 0, 256, &qpas)) ||
            (rc = get_double(c, text, "", "attn_logit_softcapping", 0, 0, &softcap)) ||
            (rc = get_double(c, text, "", "final_logit_softcapping", 0, 0, &final_softcap)))
            return rc;
        if (!(qpas > 0)) return finch_error(FINCH_ERR_FORMAT, "%s: field 'query_pre_attn_scalar' must be positive", c->path);
        cfg->attn_scale = (float)pow(qpas, -0.5);
        /* Hugging Face's Gemma 3 ignores attn_logit_softcapping (checked against transformers 5.17);
         * only Gemma 2 caps attention scores. The final-logit cap applies to both. */
        cfg->attn_softcap = a == FINCH_ARCH_GEMMA2 ? (float)softcap : 0.0f;
        cfg->final_softcap = (float)final_softcap;
    }

    /* Sliding windows: layer_types when present, else each architecture's own rule. */
    int64_t window = 0;
    if ((rc = get_int(c, text, "sliding_window", 0, a == FINCH_ARCH_GEMMA2 ? 4096 : 0, &window))) return rc;
    if (window < 0) return finch_error(FINCH_ERR_FORMAT, "%s: field 'sliding_window' must not be negative", c->path);
    if (a == FINCH_ARCH_LLAMA || a == FINCH_ARCH_GEMMA || falcon) window = 0;
    cfg->sliding_window = window;
    cfg->layer_sliding = calloc((size_t)cfg->n_layers, 1);
    if (!cfg->layer_sliding) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    int found;
    if ((rc = parse_layer_types(c, text, cfg, &found))) return rc;
    if (!found) {
        int use_sliding = 1;
        int64_t max_window_layers = 0, pattern = 6;
        if (a == FINCH_ARCH_QWEN2 || a == FINCH_ARCH_QWEN3) {
            if ((rc = get_bool(c, text, "use_sliding_window", 0, &use_sliding)) ||
                (rc = get_int(c, text, "max_window_layers", 0, 0, &max_window_layers)))
                return rc;
        }
        if (a == FINCH_ARCH_GEMMA3) {
            const char *key = field(text, "sliding_window_pattern") ? "sliding_window_pattern" : "_sliding_window_pattern";
            if ((rc = get_positive(c, text, key, 0, 6, &pattern))) return rc;
        }
        for (int64_t i = 0; i < cfg->n_layers; i++) {
            switch (a) {
            case FINCH_ARCH_MISTRAL: case FINCH_ARCH_PHI3: cfg->layer_sliding[i] = 1; break;
            case FINCH_ARCH_QWEN2: case FINCH_ARCH_QWEN3: cfg->layer_sliding[i] = use_sliding && i >= max_window_layers; break;
            case FINCH_ARCH_GEMMA2: cfg->layer_sliding[i] = i % 2 == 0; break;
            case FINCH_ARCH_GEMMA3: cfg->layer_sliding[i] = (i + 1) % pattern != 0; break;
            default: cfg->layer_sliding[i] = 0; break;
            }
        }
    }

    /* RoPE. */
    const cJSON *rp = field(text, "rope_parameters");
    if (rp && !cJSON_IsObject(rp)) return finch_error(FINCH_ERR_FORMAT, "%s: field 'rope_parameters' must be an object", c->path);
    const cJSON *full = rp ? field(rp, "full_attention") : NULL, *sliding = rp ? field(rp, "sliding_attention") : NULL;
    if (rp && (full || sliding)) {
        if ((full && !cJSON_IsObject(full)) || (sliding && !cJSON_IsObject(sliding)))
            return finch_error(FINCH_ERR_FORMAT, "%s: per-layer-type 'rope_parameters' entries must be objects", c->path);
        rope_source sf = {full, text, "rope_parameters.full_attention.", 10000.0};
        rope_source ss = {sliding ? sliding : full, text, sliding ? "rope_parameters.sliding_attention." : "rope_parameters.full_attention.", 10000.0};
        if (!full) sf = ss;
        if ((rc = parse_rope(c, &sf, cfg->head_dim, cfg->max_positions, &cfg->rope_global))) return rc;
        if ((rc = parse_rope(c, &ss, cfg->head_dim, cfg->max_positions, &cfg->rope_local))) return rc;
        cfg->has_local_rope = 1;
    } else if (rp) {
        rope_source s = {rp, text, "rope_parameters.", 10000.0};
        if ((rc = parse_rope(c, &s, cfg->head_dim, cfg->max_positions, &cfg->rope_global))) return rc;
    } else {
        const cJSON *scaling = field(text, "rope_scaling");
        if (scaling && !cJSON_IsObject(scaling))
            return finch_error(FINCH_ERR_FORMAT, "%s: field 'rope_scaling' must be an object or null", c->path);
        rope_source s = {scaling, text, "rope_scaling.", 10000.0};
        if ((rc = parse_rope(c, &s, cfg->head_dim, cfg->max_positions, &cfg->rope_global))) return rc;
        double local_base = 10000;
        if (a == FINCH_ARCH_GEMMA3) {
            if ((rc = get_double(c, text, "", "rope_local_base_freq", 0, 10000.0, &local_base))) return rc;
            rope_source sl = {NULL, NULL, "", local_base};
            if ((rc = parse_rope(c, &sl, cfg->head_dim, cfg->max_positions, &cfg->rope_local))) return rc;
            cfg->has_local_rope = 1;
        }
    }
    return parse_mrope_sections(c, text, cfg);
}

int finch_model_config_load(const char *dir, finch_model_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_ctx c = {path};
    char *text_buf = NULL;
    int rc = read_file(path, &text_buf);
    if (rc) return rc;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text_buf, &end, 1);
    if (!root) {
        long at = end ? (long)(end - text_buf) : -1;
        free(text_buf);
        return finch_error(FINCH_ERR_FORMAT, "%s: malformed JSON near byte %ld", path, at);
    }
    free(text_buf);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return finch_error(FINCH_ERR_FORMAT, "%s: the top level must be a JSON object", path);
    }
    const cJSON *text = root, *tc = field(root, "text_config");
    if (tc) {
        if (!cJSON_IsObject(tc)) {
            cJSON_Delete(root);
            return finch_error(FINCH_ERR_FORMAT, "%s: field 'text_config' must be an object", path);
        }
        text = tc;
    }
    const char *type = NULL;
    /* Qwen2.5-VL is named by its top-level model_type, not its text part's ("qwen2_5_vl_text"). */
    const cJSON *root_type = field(root, "model_type");
    int vl = cJSON_IsString(root_type) && !strcmp(root_type->valuestring, "qwen2_5_vl");
    rc = get_string(&c, vl ? root : text, "", "model_type", &type);
    if (!rc && !type && text != root) rc = get_string(&c, root, "", "model_type", &type);
    if (!rc && !type) rc = finch_error(FINCH_ERR_FORMAT, "%s: missing field 'model_type'", path);
    if (!rc) {
        snprintf(cfg->model_type, sizeof cfg->model_type, "%s", type);
        size_t i, n = sizeof known_types / sizeof known_types[0];
        for (i = 0; i < n && strcmp(known_types[i].name, type); i++) {}
        if (i == n)
            rc = finch_error(FINCH_ERR_UNSUPPORTED,
                             "%s: model_type '%s' is not supported; supported: llama, mistral, qwen2, qwen3, gemma, gemma2, "
                             "gemma3_text, phi3, falcon, qwen2_5_vl",
                             path, type);
        else
            cfg->arch = known_types[i].arch;
        cfg->has_vision = vl && field(root, "vision_config") != NULL;
    }
    if (!rc) rc = parse_text_config(&c, root, text, cfg);
    cJSON_Delete(root);
    if (rc) finch_model_config_free(cfg);
    return rc;
}

void finch_model_config_free(finch_model_config *cfg)
{
    free(cfg->layer_sliding);
    cfg->layer_sliding = NULL;
    rope_free(&cfg->rope_global);
    rope_free(&cfg->rope_local);
}

const finch_rope_config *finch_model_config_rope(const finch_model_config *cfg, int64_t layer)
{
    if (cfg->has_local_rope && cfg->layer_sliding && cfg->layer_sliding[layer]) return &cfg->rope_local;
    return &cfg->rope_global;
}
