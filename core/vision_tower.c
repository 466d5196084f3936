#include "core/vision_tower.h"
#include "core/error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- vision_config ------------------------------------------------------------------------- */

static const cJSON *field(const cJSON *obj, const char *key)
{
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* An integer field of obj (or its alias), with a default when absent (required: no default). */
static int get_int(const char *path, const cJSON *obj, const char *where, const char *key, const char *alias, int required,
                   int64_t dflt, int64_t lo, int64_t *out)
{
    const cJSON *v = field(obj, key);
    if (!v && alias) v = field(obj, alias);
    if (!v) {
        if (required) return finch_error(FINCH_ERR_FORMAT, "%s: missing field '%s%s'", path, where, key);
        *out = dflt;
        return FINCH_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo || v->valuedouble > 1e9)
        return finch_error(FINCH_ERR_FORMAT, "%s: field '%s%s' must be an integer >= %lld", path, where, key, (long long)lo);
    *out = (int64_t)v->valuedouble;
    return FINCH_OK;
}

static int read_text(const char *path, char **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return finch_error(FINCH_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t len = 0, cap = 65536, n;
    char *buf = malloc(cap + 1);
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            char *p = realloc(buf, 2 * cap + 1);
            if (!p) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory reading %s", path);
    buf[len] = 0;
    *out = buf;
    return FINCH_OK;
}

static int parse_vision(const char *path, const cJSON *root, finch_vision_config *vc)
{
    const cJSON *vj = field(root, "vision_config");
    if (!cJSON_IsObject(vj)) return finch_error(FINCH_ERR_FORMAT, "%s: field 'vision_config' must be an object", path);
    const char *w = "vision_config.";
    int64_t ids[3];
    int rc;
    if ((rc = get_int(path, vj, w, "depth", NULL, 1, 0, 1, &vc->depth)) ||
        (rc = get_int(path, vj, w, "hidden_size", "embed_dim", 1, 0, 1, &vc->hidden)) ||
        (rc = get_int(path, vj, w, "num_heads", NULL, 1, 0, 1, &vc->n_heads)) ||
        (rc = get_int(path, vj, w, "intermediate_size", NULL, 1, 0, 1, &vc->intermediate)) ||
        (rc = get_int(path, vj, w, "out_hidden_size", NULL, 1, 0, 1, &vc->out_hidden)) ||
        (rc = get_int(path, vj, w, "in_channels", "in_chans", 0, 3, 1, &vc->in_channels)) ||
        (rc = get_int(path, vj, w, "patch_size", "spatial_patch_size", 0, 14, 1, &vc->patch_size)) ||
        (rc = get_int(path, vj, w, "temporal_patch_size", NULL, 0, 2, 1, &vc->temporal_patch_size)) ||
        (rc = get_int(path, vj, w, "spatial_merge_size", NULL, 0, 2, 1, &vc->merge_size)) ||
        (rc = get_int(path, vj, w, "window_size", NULL, 0, 112, 1, &vc->window_size)) ||
        (rc = get_int(path, root, "", "image_token_id", NULL, 0, 151655, 0, &ids[0])) ||
        (rc = get_int(path, root, "", "video_token_id", NULL, 0, 151656, 0, &ids[1])) ||
        (rc = get_int(path, root, "", "vision_start_token_id", NULL, 0, 151652, 0, &ids[2])))
        return rc;
    vc->image_token_id = (int32_t)ids[0];
    vc->video_token_id = (int32_t)ids[1];
    vc->vision_start_token_id = (int32_t)ids[2];
    if (vc->depth > 4096 || vc->hidden > (1 << 20) || vc->intermediate > (1 << 22) || vc->out_hidden > (1 << 20) ||
        vc->patch_size > 4096 || vc->merge_size > 64 || vc->temporal_patch_size > 64 || vc->in_channels > 64)
        return finch_error(FINCH_ERR_FORMAT, "%s: implausible vision_config sizes", path);
    if (vc->hidden % vc->n_heads || (vc->hidden / vc->n_heads) % 4)
        return finch_error(FINCH_ERR_FORMAT,
                           "%s: vision_config.hidden_size %lld over num_heads %lld must give a head size divisible by 4 "
                           "(2-D rotary embedding)",
                           path, (long long)vc->hidden, (long long)vc->n_heads);
    vc->head_dim = vc->hidden / vc->n_heads;
    vc->patch_dim = vc->in_channels * vc->temporal_patch_size * vc->patch_size * vc->patch_size;
    vc->merge_unit = vc->merge_size * vc->merge_size;
    vc->window_units = vc->window_size / vc->merge_size / vc->patch_size;
    if (vc->window_units < 1)
        return finch_error(FINCH_ERR_FORMAT, "%s: vision_config.window_size %lld is smaller than spatial_merge_size x patch_size",
                           path, (long long)vc->window_size);
    vc->norm_eps = 1e-6; /* Hugging Face builds the tower's RMSNorms with eps 1e-6, whatever the config says. */

    const cJSON *act = field(vj, "hidden_act");
    const char *an = cJSON_IsString(act) ? act->valuestring : "silu";
    if (act && !cJSON_IsString(act)) return finch_error(FINCH_ERR_FORMAT, "%s: field 'vision_config.hidden_act' must be a string", path);
    if (!strcmp(an, "silu") || !strcmp(an, "swish")) vc->act = FINCH_ACT_SILU;
    else if (!strcmp(an, "gelu")) vc->act = FINCH_ACT_GELU_ERF;
    else if (!strcmp(an, "gelu_pytorch_tanh") || !strcmp(an, "gelu_new")) vc->act = FINCH_ACT_GELU_TANH;
    else return finch_error(FINCH_ERR_UNSUPPORTED, "%s: vision_config.hidden_act '%s' is not supported", path, an);

    vc->rope_theta = 10000.0;
    const cJSON *rp = field(vj, "rope_parameters"), *theta = rp ? field(rp, "rope_theta") : field(vj, "rope_theta");
    if (theta) {
        if (!cJSON_IsNumber(theta) || !(theta->valuedouble > 0))
            return finch_error(FINCH_ERR_FORMAT, "%s: the vision rope_theta must be a positive number", path);
        vc->rope_theta = theta->valuedouble;
    }

    vc->full_attention = calloc((size_t)vc->depth, 1);
    if (!vc->full_attention) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    const cJSON *full = field(vj, "fullatt_block_indexes"), *e;
    if (full) {
        if (!cJSON_IsArray(full))
            return finch_error(FINCH_ERR_FORMAT, "%s: field 'vision_config.fullatt_block_indexes' must be a list", path);
        cJSON_ArrayForEach(e, full) {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (double)vc->depth || e->valuedouble != floor(e->valuedouble))
                return finch_error(FINCH_ERR_FORMAT, "%s: vision_config.fullatt_block_indexes must hold block numbers below depth %lld",
                                   path, (long long)vc->depth);
            vc->full_attention[(int64_t)e->valuedouble] = 1;
        }
    } else {
        for (int64_t b = 7; b < vc->depth; b += 8) vc->full_attention[b] = 1; /* the class default [7, 15, 23, 31] */
    }
    return FINCH_OK;
}

int finch_vision_config_load(const char *dir, finch_vision_config *vc)
{
    memset(vc, 0, sizeof *vc);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = NULL;
    int rc = read_text(path, &text);
    if (rc) return rc;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) return finch_error(FINCH_ERR_FORMAT, "%s: malformed JSON", path);
    rc = parse_vision(path, root, vc);
    cJSON_Delete(root);
    if (rc) finch_vision_config_free(vc);
    return rc;
}

void finch_vision_config_free(finch_vision_config *vc)
{
    free(vc->full_attention);
    vc->full_attention = NULL;
}

/* ---- weights ------------------------------------------------------------------------------- */

typedef struct vloader {
    finch_model *m;
    const st_set *set;
    const char *dir;
    const char *prefix;          /* in the checkpoint: "visual." or "model.visual." */
} vloader;

/* Loads <prefix><rel>.weight as param `model.visual.<rel>.weight` (the transformers 5 name). */
static int load_tensor(vloader *L, finch_param *p, const char *rel, const char *suffix, finch_dtype dtype, int ndim,
                       int64_t d0, int64_t d1, int flatten)
{
    char name[256];
    snprintf(name, sizeof name, "%s%s.%s", L->prefix, rel, suffix);
    int rc = finch_model_load_param(L->m, L->set, L->dir, p, name, dtype, ndim, d0, d1, flatten);
    if (!rc) snprintf(p->name, sizeof p->name, "model.visual.%s.%s", rel, suffix);
    return rc;
}

static int register_linear(finch_model *m, finch_linear_module *lin)
{
    finch_linear_module **p = realloc(m->linears, (size_t)(m->n_linears + 1) * sizeof *p);
    if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    m->linears = p;
    lin->id = (uint64_t)m->n_linears;
    m->linears[m->n_linears++] = lin;
    return FINCH_OK;
}

static int load_linear(vloader *L, finch_linear_module *lin, const char *rel, int64_t in, int64_t out, int bias, int lora_target)
{
    snprintf(lin->path, sizeof lin->path, "model.visual.%s", rel);
    const char *dot = strrchr(lin->path, '.');
    lin->leaf = dot ? dot + 1 : lin->path;
    lin->in_features = in;
    lin->out_features = out;
    lin->vision = 1;
    int rc = load_tensor(L, &lin->weight, rel, "weight", L->m->dtype, 2, out, in, !lora_target);
    if (!rc && bias) rc = load_tensor(L, &lin->bias, rel, "bias", FINCH_DTYPE_F32, 1, out, 1, 0);
    if (!rc && lora_target) rc = register_linear(L->m, lin);
    return rc;
}

static int upload_rope_table(finch_model *m, finch_vision *v)
{
    const finch_vision_config *c = &v->cfg;
    int64_t quarter = c->head_dim / 4, half = c->head_dim / 2;
    float table[4096];
    if (half > 4096) return finch_error(FINCH_ERR_UNSUPPORTED, "vision head size %lld is too large", (long long)c->head_dim);
    /* Hugging Face: inv_freq = 1 / theta^(2i / (head_dim / 2)) for i < head_dim / 4, applied to the
     * patch row for the first quarter of the head and to its column for the second. */
    for (int64_t i = 0; i < quarter; i++)
        table[i] = table[i + quarter] = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / (double)half));
    int rc = finch_devmem_alloc(&m->mem, (size_t)half * sizeof(float), "the vision RoPE table", &v->tables);
    if (rc) return rc;
    v->rope_inv_freq = (finch_dptr){v->tables, 0};
    return finch_model_upload_f32(m, table, 1, half, NULL, FINCH_DTYPE_F32, v->rope_inv_freq);
}

int finch_vision_load(finch_model *m, const st_set *set, const char *dir)
{
    finch_vision *v = calloc(1, sizeof *v);
    if (!v) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    m->vision = v;
    int rc = finch_vision_config_load(dir, &v->cfg);
    if (rc) return rc;
    const finch_vision_config *c = &v->cfg;
    if (c->out_hidden != m->cfg.hidden)
        return finch_error(FINCH_ERR_FORMAT, "%s/config.json: vision_config.out_hidden_size %lld differs from the text hidden_size %lld",
                           dir, (long long)c->out_hidden, (long long)m->cfg.hidden);
    vloader L = {m, set, dir, "model.visual."};
    if (!st_set_find(set, "model.visual.patch_embed.proj.weight")) L.prefix = "visual.";
    int64_t D = c->hidden, I = c->intermediate, M = c->merge_unit * D;
    char rel[128];
    if ((rc = load_linear(&L, &v->patch_embed, "patch_embed.proj", c->patch_dim, D, 0, 0))) return rc;
    v->blocks = calloc((size_t)c->depth, sizeof *v->blocks);
    if (!v->blocks) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int64_t b = 0; b < c->depth; b++) {
        finch_vision_block *bl = &v->blocks[b];
        struct {
            finch_linear_module *lin;
            const char *name;
            int64_t in, out;
        } lins[] = {{&bl->qkv, "attn.qkv", D, 3 * D}, {&bl->proj, "attn.proj", D, D}, {&bl->gate, "mlp.gate_proj", D, I},
                    {&bl->up, "mlp.up_proj", D, I},   {&bl->down, "mlp.down_proj", I, D}};
        snprintf(rel, sizeof rel, "blocks.%lld.norm1", (long long)b);
        if ((rc = load_tensor(&L, &bl->norm1, rel, "weight", m->dtype, 1, D, 1, 0))) return rc;
        snprintf(rel, sizeof rel, "blocks.%lld.norm2", (long long)b);
        if ((rc = load_tensor(&L, &bl->norm2, rel, "weight", m->dtype, 1, D, 1, 0))) return rc;
        for (size_t i = 0; i < sizeof lins / sizeof lins[0]; i++) {
            snprintf(rel, sizeof rel, "blocks.%lld.%s", (long long)b, lins[i].name);
            if ((rc = load_linear(&L, lins[i].lin, rel, lins[i].in, lins[i].out, 1, 1))) return rc;
        }
    }
    if ((rc = load_tensor(&L, &v->merger_norm, "merger.ln_q", "weight", m->dtype, 1, D, 1, 0)) ||
        (rc = load_linear(&L, &v->merger_fc1, "merger.mlp.0", M, M, 1, 1)) ||
        (rc = load_linear(&L, &v->merger_fc2, "merger.mlp.2", M, c->out_hidden, 1, 1)))
        return rc;
    return upload_rope_table(m, v);
}

static void release_linear(finch_model *m, finch_linear_module *lin)
{
    finch_param_release(m, &lin->weight);
    finch_param_release(m, &lin->bias);
    finch_param_release(m, &lin->lora_a);
    finch_param_release(m, &lin->lora_b);
}

void finch_vision_free(finch_model *m)
{
    finch_vision *v = m->vision;
    if (!v) return;
    release_linear(m, &v->patch_embed);
    for (int64_t b = 0; v->blocks && b < v->cfg.depth; b++) {
        finch_vision_block *bl = &v->blocks[b];
        finch_param_release(m, &bl->norm1);
        finch_param_release(m, &bl->norm2);
        finch_linear_module *lins[] = {&bl->qkv, &bl->proj, &bl->gate, &bl->up, &bl->down};
        for (size_t i = 0; i < sizeof lins / sizeof lins[0]; i++) release_linear(m, lins[i]);
    }
    finch_param_release(m, &v->merger_norm);
    release_linear(m, &v->merger_fc1);
    release_linear(m, &v->merger_fc2);
    finch_devmem_free(&m->mem, v->tables);
    finch_vision_config_free(&v->cfg);
    free(v->blocks);
    free(v->host);
    free(v->pixels);
    free(v->runs);
    free(v);
    m->vision = NULL;
}

void finch_vision_visit_devrefs(finch_vision *v, finch_devref_fn fn, void *ctx)
{
    for (int64_t b = 0; v->blocks && b < v->cfg.depth; b++) {
        fn(&v->blocks[b].norm1.data.buf, ctx);
        fn(&v->blocks[b].norm1.grad.buf, ctx);
        fn(&v->blocks[b].norm2.data.buf, ctx);
        fn(&v->blocks[b].norm2.grad.buf, ctx);
    }
    fn(&v->merger_norm.data.buf, ctx);
    fn(&v->merger_norm.grad.buf, ctx);
    fn(&v->tables, ctx);
    fn(&v->rope_inv_freq.buf, ctx);
}

/* ---- the layout of one step's images --------------------------------------------------------- */

int finch_vision_layout_make(finch_vision *v, const int32_t *grid_thw, int64_t n_images, int64_t n_patches,
                             finch_vision_layout *out)
{
    const finch_vision_config *c = &v->cfg;
    int64_t ms = c->merge_size, unit = c->merge_unit, ww = c->window_units;
    memset(out, 0, sizeof *out);
    int64_t total = 0, frames = 0, windows = 0;
    for (int64_t i = 0; i < n_images; i++) {
        const int32_t *g = grid_thw + 3 * i;
        if (g[0] < 1 || g[1] < 1 || g[2] < 1 || g[1] % ms || g[2] % ms || (int64_t)g[0] * g[1] * g[2] > ((int64_t)1 << 28))
            return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                               "image %lld: grid_thw %dx%dx%d must be positive with height and width multiples of "
                               "spatial_merge_size %lld",
                               (long long)i, g[0], g[1], g[2], (long long)ms);
        int64_t lh = g[1] / ms, lw = g[2] / ms;
        total += (int64_t)g[0] * g[1] * g[2];
        frames += g[0];
        windows += (int64_t)g[0] * ((lh + ww - 1) / ww) * ((lw + ww - 1) / ww);
    }
    if (total != n_patches)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "the batch has %lld patch rows, but its image grids add up to %lld",
                           (long long)n_patches, (long long)total);
    if (n_patches > INT32_MAX / 4) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "too many image patches (%lld)", (long long)n_patches);
    int64_t units = n_patches / unit;
    size_t need = (size_t)(3 * n_patches + windows + 1 + frames + 1 + 2 * units);
    if (need > v->host_cap) {
        int32_t *p = realloc(v->host, need * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        v->host = p;
        v->host_cap = need;
    }
    out->n_images = n_images;
    out->n_patches = n_patches;
    out->n_units = units;
    out->pixel_row = v->host;
    out->rope_pos = out->pixel_row + n_patches;
    out->cu_window = out->rope_pos + 2 * n_patches;
    out->cu_frame = out->cu_window + windows + 1;
    out->token_unit = out->cu_frame + frames + 1;
    int32_t *window_unit = out->token_unit + units; /* window-order position j holds unit window_unit[j] */

    int64_t j = 0, unit0 = 0, nw = 0, nf = 0;
    out->cu_window[0] = out->cu_frame[0] = 0;
    for (int64_t i = 0; i < n_images; i++) {
        const int32_t *g = grid_thw + 3 * i;
        int64_t lh = g[1] / ms, lw = g[2] / ms;
        for (int64_t t = 0; t < g[0]; t++) {
            for (int64_t wr = 0; wr < lh; wr += ww)
                for (int64_t wc = 0; wc < lw; wc += ww) {
                    int64_t n = 0;
                    for (int64_t r = wr; r < lh && r < wr + ww; r++)
                        for (int64_t col = wc; col < lw && col < wc + ww; col++, n++)
                            window_unit[j++] = (int32_t)(unit0 + (t * lh + r) * lw + col);
                    out->cu_window[nw + 1] = out->cu_window[nw] + (int32_t)(n * unit);
                    if (n * unit > out->max_window) out->max_window = n * unit;
                    nw++;
                }
            out->cu_frame[nf + 1] = out->cu_frame[nf] + (int32_t)(lh * lw * unit);
            if (lh * lw * unit > out->max_frame) out->max_frame = lh * lw * unit;
            nf++;
        }
        unit0 += (int64_t)g[0] * lh * lw;
    }
    out->n_windows = nw;
    out->n_frames = nf;

    /* Each patch's (row, column) in its image; patches come in merge cells, cells in raster order. */
    int32_t *ph = out->rope_pos, *pw = out->rope_pos + n_patches;
    for (int64_t i = 0, u = 0; i < n_images; i++) {
        const int32_t *g = grid_thw + 3 * i;
        int64_t lw = g[2] / ms, per_frame = (g[1] / ms) * lw;
        for (int64_t k = 0; k < (int64_t)g[0] * per_frame; k++, u++) {
            int64_t cell = k % per_frame, br = cell / lw, bc = cell % lw;
            for (int64_t q = 0; q < unit; q++) {
                ph[u * unit + q] = (int32_t)(br * ms + q / ms);
                pw[u * unit + q] = (int32_t)(bc * ms + q % ms);
            }
        }
    }
    /* Permute: window-order row r = (j, q) reads raster row (window_unit[j], q). Positions follow. */
    int32_t *tmp_h = malloc((size_t)(2 * n_patches) * sizeof *tmp_h + 1);
    if (!tmp_h) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    memcpy(tmp_h, out->rope_pos, (size_t)(2 * n_patches) * sizeof *tmp_h);
    for (int64_t jj = 0; jj < units; jj++) {
        int64_t u = window_unit[jj];
        out->token_unit[u] = (int32_t)jj;
        for (int64_t q = 0; q < unit; q++) {
            int64_t r = jj * unit + q, src = u * unit + q;
            out->pixel_row[r] = (int32_t)src;
            ph[r] = tmp_h[src];
            pw[r] = tmp_h[n_patches + src];
        }
    }
    free(tmp_h);
    return FINCH_OK;
}

/* ---- forward ------------------------------------------------------------------------------- */

typedef struct vctx {
    finch_model *m;
    finch_graph *g;
    int train;
} vctx;

static int linear(vctx *s, const finch_tensor *x, const finch_linear_module *lin, finch_tensor *y)
{
    finch_linear_params p = finch_model_linear_params(s->m, lin, s->train);
    return finch_op_linear(s->g, x, &p, y);
}

/* From the graph's arena: the model's in a training step, a session's in generation. */
static int upload(finch_model *m, finch_graph *g, const void *src, size_t bytes, finch_dptr *dst)
{
    int rc = finch_arena_alloc(g->arena, bytes, dst);
    if (rc) return rc;
    if (m->be->api->write(m->be->dev, m->be->stream, *dst, src, bytes))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "uploading the images");
    return FINCH_OK;
}

/* The pixel rows in window order, as a [n_patches, patch_dim] tensor of the compute dtype. */
static int upload_pixels(vctx *s, const float *pixel_values, const finch_vision_layout *L, finch_tensor *px)
{
    finch_model *m = s->m;
    finch_vision *v = m->vision;
    int64_t pd = v->cfg.patch_dim, n = L->n_patches;
    size_t count = (size_t)(n * pd);
    if (count > v->pixels_cap) {
        float *p = realloc(v->pixels, count * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory for %lld image patches", (long long)n);
        v->pixels = p;
        v->pixels_cap = count;
    }
    for (int64_t r = 0; r < n; r++)
        memcpy(v->pixels + r * pd, pixel_values + (int64_t)L->pixel_row[r] * pd, (size_t)pd * sizeof(float));
    int rc = finch_graph_tensor(s->g, m->dtype, n, pd, 0, px);
    if (rc) return rc;
    if (m->dtype == FINCH_DTYPE_F32) {
        if (m->be->api->write(m->be->dev, m->be->stream, px->data, v->pixels, count * sizeof(float)))
            return finch_device_error(m->be, FINCH_ERR_DEVICE, "uploading the images");
        return FINCH_OK;
    }
    finch_dptr staging;
    if ((rc = upload(m, s->g, v->pixels, count * sizeof(float), &staging))) return rc;
    if (m->be->api->cast(m->be->dev, m->be->stream, (int64_t)count, FINCH_DTYPE_F32, staging, m->dtype, px->data))
        return finch_device_error(m->be, FINCH_ERR_DEVICE, "converting the images");
    return FINCH_OK;
}

static int block_forward(vctx *s, const finch_vision_block *bl, finch_dptr pos, finch_dptr cu, int64_t n_seqs,
                         int64_t max_seqlen, const finch_tensor *x, finch_tensor *out)
{
    const finch_vision_config *c = &s->m->vision->cfg;
    int64_t D = c->hidden;
    float eps = (float)c->norm_eps;
    finch_tensor a, qkv, q, k, v, o, att, x1, b, gate, up, h, mo;
    int rc;
    if ((rc = finch_op_rmsnorm(s->g, x, &bl->norm1, 0.0f, eps, &a)) || (rc = linear(s, &a, &bl->qkv, &qkv))) return rc;
    q = finch_tensor_cols(&qkv, 0, D);
    k = finch_tensor_cols(&qkv, D, D);
    v = finch_tensor_cols(&qkv, 2 * D, D);
    finch_rope_params rp;
    memset(&rp, 0, sizeof rp);
    rp.n_heads = c->n_heads;
    rp.head_dim = rp.rot_dim = c->head_dim;
    rp.positions = pos;
    rp.inv_freq = s->m->vision->rope_inv_freq;
    rp.attn_factor = 1.0f;
    rp.n_sections = 2;
    rp.sections[0] = rp.sections[1] = (int)(c->head_dim / 4);
    if ((rc = finch_op_rope(s->g, &q, &rp)) || (rc = finch_op_rope(s->g, &k, &rp))) return rc;
    finch_attention_params ap;
    memset(&ap, 0, sizeof ap);
    ap.n_seqs = n_seqs;
    ap.max_seqlen = max_seqlen;
    ap.cu_seqlens = cu;
    ap.n_heads = ap.n_kv_heads = c->n_heads;
    ap.head_dim = c->head_dim;
    ap.scale = (float)(1.0 / sqrt((double)c->head_dim));
    ap.bidirectional = 1;
    if ((rc = finch_op_attention(s->g, &q, &k, &v, &ap, &o)) || (rc = linear(s, &o, &bl->proj, &att)) ||
        (rc = finch_op_add(s->g, x, &att, NULL, &x1)))
        return rc;
    if ((rc = finch_op_rmsnorm(s->g, &x1, &bl->norm2, 0.0f, eps, &b)) || (rc = linear(s, &b, &bl->gate, &gate)) ||
        (rc = linear(s, &b, &bl->up, &up)) || (rc = finch_op_glu(s->g, c->act, &gate, &up, &h)) ||
        (rc = linear(s, &h, &bl->down, &mo)))
        return rc;
    return finch_op_add(s->g, &x1, &mo, NULL, out);
}

int finch_vision_forward(finch_model *m, finch_graph *g, const float *pixel_values, const int32_t *grid_thw,
                         int64_t n_images, int64_t n_patches, int train, finch_tensor *out)
{
    finch_vision *v = m->vision;
    const finch_vision_config *c = &v->cfg;
    finch_vision_layout L;
    int rc = finch_vision_layout_make(v, grid_thw, n_images, n_patches, &L);
    if (rc) return rc;
    /* Device copies of the integer layout: positions, both cu_seqlens, the token gather. */
    size_t ints = (size_t)(2 * L.n_patches + L.n_windows + 1 + L.n_frames + 1 + L.n_units);
    finch_dptr d;
    if ((rc = upload(m, g, L.rope_pos, ints * sizeof(int32_t), &d))) return rc;
    finch_dptr pos = d, cu_window = finch_dptr_at(d, (size_t)(2 * L.n_patches) * 4),
               cu_frame = finch_dptr_at(cu_window, (size_t)(L.n_windows + 1) * 4),
               token_unit = finch_dptr_at(cu_frame, (size_t)(L.n_frames + 1) * 4);

    vctx s = {m, g, train};
    finch_tensor px, x, y, xn, merged_in, h, ha, merged;
    if ((rc = upload_pixels(&s, pixel_values, &L, &px)) || (rc = linear(&s, &px, &v->patch_embed, &x))) return rc;
    for (int64_t b = 0; b < c->depth; b++) {
        int full = c->full_attention[b];
        rc = block_forward(&s, &v->blocks[b], pos, full ? cu_frame : cu_window, full ? L.n_frames : L.n_windows,
                           full ? L.max_frame : L.max_window, &x, &y);
        if (rc) return rc;
        x = y;
    }
    if ((rc = finch_op_rmsnorm(g, &x, &v->merger_norm, 0.0f, (float)c->norm_eps, &xn))) return rc;
    merged_in = finch_tensor_reshape(&xn, L.n_units, c->merge_unit * c->hidden);
    if ((rc = linear(&s, &merged_in, &v->merger_fc1, &h)) || (rc = finch_op_activation(g, FINCH_ACT_GELU_ERF, 0.0f, &h, &ha)) ||
        (rc = linear(&s, &ha, &v->merger_fc2, &merged)))
        return rc;
    return finch_op_gather_rows(g, &merged, token_unit, L.n_units, out);
}
