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

int finch_vl_lora_targets(const finch_model *m, const char *targets, char **json)
{
    if (!m->vision || strcmp(targets, "all-linear")) return FINCH_OK;
    size_t cap = 64, len = 0;
    for (int i = 0; i < m->n_linears; i++) cap += strlen(m->linears[i]->leaf) + 1;
    char *re = malloc(cap);
    if (!re) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    len = (size_t)sprintf(re, "^(?!.*visual).*\\.(");
    for (int i = 0; i < m->n_linears; i++) {
        const finch_linear_module *lin = m->linears[i];
        int seen = lin->vision || !lin->rank;
        for (int j = 0; j < i && !seen; j++) seen = !m->linears[j]->vision && m->linears[j]->rank && !strcmp(m->linears[j]->leaf, lin->leaf);
        if (!seen) len += (size_t)sprintf(re + len, "%s%s", re[len - 1] == '(' ? "" : "|", lin->leaf);
    }
    strcpy(re + len, ")$");
    cJSON *str = cJSON_CreateString(re);
    char *text = str ? cJSON_PrintUnformatted(str) : NULL;
    cJSON_Delete(str);
    free(re);
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
