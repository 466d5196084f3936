/* Qwen2.5-VL on top of the text model: the vision tower's load, the transformers 5 tensor names,
 * multimodal RoPE positions, and the image features written over the image tokens' embeddings. */
#include "core/model_vl.h"
#include "core/error.h"
#include "core/mrope.h"
#include "core/vision_tower.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "model.<rest>" -> "model.language_model.<rest>" (transformers 4 checkpoints name the text model
 * model.*; PEFT adapters and gradients of transformers 5 use model.language_model.*). */
static void rename_text(char *name, size_t size)
{
    static const char from[] = "model.", to[] = "model.language_model.";
    size_t nf = sizeof from - 1, nt = sizeof to - 1, len = strlen(name);
    if (strncmp(name, from, nf) || !strncmp(name, to, nt) || len + nt - nf + 1 > size) return;
    memmove(name + nt, name + nf, len - nf + 1);
    memcpy(name, to, nt);
}

static void rename_linear(finch_linear_module *lin)
{
    rename_text(lin->path, sizeof lin->path);
    const char *dot = strrchr(lin->path, '.');
    lin->leaf = dot ? dot + 1 : lin->path;
    rename_text(lin->weight.name, sizeof lin->weight.name);
    rename_text(lin->bias.name, sizeof lin->bias.name);
}

int finch_vl_load(finch_model *m, const st_set *set, const char *dir)
{
    finch_param *top[] = {&m->embed, &m->final_norm, &m->final_norm_b};
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) rename_text(top[i]->name, sizeof top[i]->name);
    for (int64_t l = 0; l < m->cfg.n_layers; l++) {
        finch_layer *ly = &m->layers[l];
        finch_param *norms[] = {&ly->attn_norm, &ly->attn_norm_b, &ly->mlp_norm, &ly->mlp_norm_b,
                                &ly->post_attn_norm, &ly->post_ffn_norm, &ly->q_norm, &ly->k_norm};
        for (size_t i = 0; i < sizeof norms / sizeof norms[0]; i++) rename_text(norms[i]->name, sizeof norms[i]->name);
        for (int i = 0; i < ly->n_linears; i++) rename_linear(ly->linears[i]);
    }
    if (m->cfg.rope_n_sections != 3)
        return finch_error(FINCH_ERR_FORMAT, "%s/config.json: a qwen2_5_vl model needs rope mrope_section with 3 entries", dir);
    return finch_vision_load(m, set, dir);
}

void finch_vl_free(finch_model *m)
{
    finch_vision_free(m);
}

/* 1 when the comma-separated targets name a group (all-linear, vision-blocks, vision-merger). */
static int names_group(const char *targets)
{
    static const char *const groups[] = {"all-linear", "vision-blocks", "vision-merger"};
    for (const char *p = targets; *p;) {
        while (*p == ',' || *p == ' ') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        size_t len = (size_t)(e - p);
        while (len && p[len - 1] == ' ') len--;
        for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
            if (len == strlen(groups[g]) && !strncmp(p, groups[g], len)) return 1;
        p = e;
    }
    return 0;
}

/* The adapted modules' names after `after` in their path (the leaf for the language model), distinct,
 * as a regex alternation with dots escaped, appended to re at *len. kind: 0 language model, 1 vision
 * blocks, 2 merger. Returns how many. */
static int alternation(const finch_model *m, int kind, char *re, size_t *len)
{
    int n = 0;
    size_t start = *len;
    for (int i = 0; i < m->n_linears; i++) {
        const finch_linear_module *lin = m->linears[i];
        if (!lin->rank) continue;
        const char *name = NULL;
        if (kind == 0 && !lin->vision) {
            name = lin->leaf;
        } else if (kind == 1 && lin->vision && (name = strstr(lin->path, ".blocks."))) {
            name = strchr(name + 8, '.');
            name = name ? name + 1 : NULL;
        } else if (kind == 2 && lin->vision && (name = strstr(lin->path, ".merger."))) {
            name += 8;
        }
        if (!name) continue;
        char esc[256];
        size_t k = 0;
        for (const char *c = name; *c && k + 3 < sizeof esc; c++) {
            if (*c == '.') esc[k++] = '\\';
            esc[k++] = *c;
        }
        esc[k] = 0;
        /* distinct: skip a name already in this alternation */
        int seen = 0;
        for (const char *q = re + start; !seen && (q = strstr(q, esc)); q += k) {
            char before = q == re + start ? '|' : q[-1], after = q[k];
            seen = (before == '|' || before == '(') && (after == '|' || after == 0);
        }
        if (seen) continue;
        *len += (size_t)sprintf(re + *len, "%s%s", n ? "|" : "", esc);
        n++;
    }
    return n;
}

int finch_vl_lora_targets(const finch_model *m, const char *targets, char **json)
{
    if (!m->vision || !names_group(targets)) return FINCH_OK;
    size_t cap = 256;
    for (int i = 0; i < m->n_linears; i++) cap += 2 * strlen(m->linears[i]->path) + 2;
    char *re = malloc(cap);
    if (!re) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    /* PEFT's regular-expression form (re.fullmatch on module names): the language model's leaves away
     * from the tower, and the tower's adapted modules inside its blocks and merger. */
    static const char *const heads[] = {"(?!.*visual).*\\.(", ".*visual\\.blocks\\.\\d+\\.(", ".*visual\\.merger\\.("};
    char *part[3] = {NULL, NULL, NULL};
    int n_parts = 0, rc = FINCH_OK;
    for (int kind = 0; kind < 3 && !rc; kind++) {
        size_t len = 0;
        if (!(part[kind] = malloc(cap))) {
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
            break;
        }
        part[kind][0] = 0;
        if (alternation(m, kind, part[kind], &len)) n_parts++;
        else part[kind][0] = 0;
    }
    size_t len = 0;
    if (!rc) {
        /* Only the language model: the form transformers + PEFT users know, "^(?!.*visual).*\.(q_proj|...)$". */
        len = (size_t)sprintf(re, n_parts == 1 && part[0][0] ? "^" : "^(?:");
        int k = 0;
        for (int kind = 0; kind < 3; kind++) {
            if (!part[kind][0]) continue;
            len += (size_t)sprintf(re + len, "%s%s%s)", k++ ? "|" : "", heads[kind], part[kind]);
        }
        strcpy(re + len, n_parts == 1 && part[0][0] ? "$" : ")$");
    }
    for (int kind = 0; kind < 3; kind++) free(part[kind]);
    cJSON *str = rc ? NULL : cJSON_CreateString(re);
    char *text = str ? cJSON_PrintUnformatted(str) : NULL;
    cJSON_Delete(str);
    free(re);
    if (rc) return rc;
    if (!text) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    free(*json);
    *json = text;
    return FINCH_OK;
}

static int each_linear(finch_model *m, finch_linear_module *lin, finch_vl_param_fn fn)
{
    if (fn) fn(m, &lin->weight, lin, 0);
    if (fn && lin->bias.data.buf) fn(m, &lin->bias, lin, 0);
    return 1 + (lin->bias.data.buf != NULL);
}

static int each_norm(finch_model *m, finch_param *p, finch_vl_param_fn fn)
{
    if (fn) fn(m, p, NULL, 0);
    return 1;
}

int finch_vl_each_param(finch_model *m, finch_vl_param_fn fn)
{
    finch_vision *v = m->vision;
    if (!v) return 0;
    int n = each_linear(m, &v->patch_embed, fn);
    for (int64_t b = 0; b < v->cfg.depth; b++) {
        finch_vision_block *bl = &v->blocks[b];
        n += each_norm(m, &bl->norm1, fn);
        n += each_norm(m, &bl->norm2, fn);
        finch_linear_module *lins[] = {&bl->qkv, &bl->proj, &bl->gate, &bl->up, &bl->down};
        for (size_t i = 0; i < sizeof lins / sizeof lins[0]; i++) n += each_linear(m, lins[i], fn);
    }
    n += each_norm(m, &v->merger_norm, fn);
    n += each_linear(m, &v->merger_fc1, fn);
    return n + each_linear(m, &v->merger_fc2, fn);
}

/* ---- per step -------------------------------------------------------------------------------- */

static int has_images(const finch_batch *b)
{
    return b->n_images != 0 || b->n_patches != 0 || b->pixel_values || b->image_grid_thw;
}

int finch_vl_positions(finch_model *m, const finch_batch *b, finch_dptr *positions)
{
    finch_vision *v = m->vision;
    if (!v) {
        if (has_images(b))
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "batch: %lld image(s) given, but model_type '%s' has no vision tower",
                               (long long)b->n_images, m->cfg.model_type);
        return FINCH_OK;
    }
    if (b->n_images < 0 || b->n_patches < 0 || (b->n_images > 0 && (!b->pixel_values || !b->image_grid_thw || !b->n_patches)))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                           "batch: %lld image(s) need pixel_values [n_patches, %lld] and image_grid_thw [n_images, 3] "
                           "(n_patches %lld, pixel_values %s, image_grid_thw %s)",
                           (long long)b->n_images, (long long)v->cfg.patch_dim, (long long)b->n_patches,
                           b->pixel_values ? "set" : "NULL", b->image_grid_thw ? "set" : "NULL");
    if (b->n_images == 0 && (b->n_patches || b->pixel_values))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "batch: pixel values given with n_images = 0");
    int64_t n = b->batch * b->seq_len;
    int32_t *pos = malloc((size_t)(3 * n) * sizeof *pos);
    if (!pos) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = (b->text_positions ? finch_mrope_text_positions : finch_mrope_positions)(
        b->input_ids, b->segment_ids, b->batch, b->seq_len, v->cfg.image_token_id, b->image_grid_thw, b->n_images, v->cfg.merge_size, pos);
    if (!rc) rc = finch_arena_alloc(&m->arena, (size_t)(3 * n) * sizeof *pos, positions);
    if (!rc && m->be->api->write(m->be->dev, m->be->stream, *positions, pos, (size_t)(3 * n) * sizeof *pos))
        rc = finch_device_error(m->be, FINCH_ERR_DEVICE, "uploading the position ids");
    free(pos);
    return rc;
}

int finch_vl_embed_images(finch_model *m, finch_graph *g, const finch_batch *b, int train, finch_tensor *x0)
{
    finch_vision *v = m->vision;
    if (!v || b->n_images == 0) return FINCH_OK;
    /* Runs of consecutive image tokens, in order: features row k goes to the k-th image token. */
    int64_t n = b->batch * b->seq_len, n_runs = 0, k = 0;
    for (int64_t t = 0; t < n; t++) {
        if (b->input_ids[t] != v->cfg.image_token_id) continue;
        int at_run_start = t == 0 || b->input_ids[t - 1] != v->cfg.image_token_id || t % b->seq_len == 0;
        if (at_run_start) {
            if ((size_t)n_runs == v->runs_cap) {
                size_t cap = v->runs_cap ? 2 * v->runs_cap : 16;
                finch_row_run *p = realloc(v->runs, cap * sizeof *p);
                if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
                v->runs = p;
                v->runs_cap = cap;
            }
            v->runs[n_runs++] = (finch_row_run){t, k, 0};
        }
        v->runs[n_runs - 1].count++;
        k++;
    }
    finch_tensor feats;
    int rc = finch_vision_forward(m, g, b->pixel_values, b->image_grid_thw, b->n_images, b->n_patches, train, &feats);
    if (rc) return rc;
    if (feats.rows != k)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "batch: %lld image tokens, but the images make %lld features", (long long)k,
                           (long long)feats.rows);
    if (feats.node >= 0 && x0->node < 0 && (rc = finch_graph_bind_grad(g, x0, finch_dptr_none()))) return rc;
    return finch_op_overwrite_rows(g, x0, &feats, v->runs, n_runs);
}
