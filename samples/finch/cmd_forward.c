/* finch forward: one forward (and optionally backward) pass on a batch from a safetensors file,
 * written to another safetensors file. A verification tool for comparing with other frameworks. */
#include "core/error.h"
#include "core/safetensors.h"
#include "finch/finch.h"
#include "samples/finch/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: finch forward --model DIR [--adapter DIR] --batch IN.safetensors [--grads] [--full]\n"
               "                     [--load-in-4bit] [--backend NAME] [--dtype f32|bf16] [--image PATH]... [--processor JSON]\n"
               "                     [--text-positions] --out OUT.safetensors\n"
               "Reads int32 input_ids and labels [B, T] (-100 = ignored); writes logits [B, T, V] f32, loss [1] f32\n"
               "and, with --grads, grad.<name> for every trainable tensor (adapter tensors, or every weight with --full).\n"
               "--load-in-4bit quantises the decoder's linear weights to NF4 as they load (QLoRA); a bitsandbytes\n"
               "4-bit checkpoint loads in 4 bits without it.\n"
               "Vision-language models: each --image fills the next block of image tokens in input_ids (in order;\n"
               "grid_t*grid_h*grid_w/4 tokens each), preprocessed as preprocessor_config.json (--processor, else the\n"
               "model folder's) says; without --image, the batch file's pixel_values and image_grid_thw are used when\n"
               "present. --text-positions numbers positions 0, 1, 2, ... as transformers does without mm_token_type_ids.\n");
}

#define MAX_IMAGES 64

typedef struct forward_args {
    const char *model, *adapter, *batch, *backend, *dtype, *out, *processor;
    int grads, full, text_positions, load_in_4bit;
    const char *images[MAX_IMAGES];
    int n_images;
} forward_args;

static int parse_args(int argc, char **argv, forward_args *a)
{
    memset(a, 0, sizeof *a);
    a->backend = "auto";
    a->dtype = "f32";
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char **slot = !strcmp(s, "--model") ? &a->model : !strcmp(s, "--adapter") ? &a->adapter
                          : !strcmp(s, "--batch") ? &a->batch : !strcmp(s, "--backend") ? &a->backend
                          : !strcmp(s, "--dtype") ? &a->dtype : !strcmp(s, "--out") ? &a->out
                          : !strcmp(s, "--processor") ? &a->processor : NULL;
        if (!strcmp(s, "--image")) {
            if (a->n_images == MAX_IMAGES) {
                fprintf(stderr, "finch forward: at most %d --image\n", MAX_IMAGES);
                return 2;
            }
            slot = &a->images[a->n_images++];
        }
        if (slot) {
            if (i + 1 >= argc) {
                fprintf(stderr, "finch forward: %s needs a value\n", s);
                return 2;
            }
            *slot = argv[++i];
        } else if (!strcmp(s, "--grads")) {
            a->grads = 1;
        } else if (!strcmp(s, "--full")) {
            a->full = 1;
        } else if (!strcmp(s, "--load-in-4bit")) {
            a->load_in_4bit = 1;
        } else if (!strcmp(s, "--text-positions")) {
            a->text_positions = 1;
        } else if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            usage(stdout);
            return -1;
        } else {
            fprintf(stderr, "finch forward: unknown argument '%s'\n", s);
            usage(stderr);
            return 2;
        }
    }
    if (!a->model || !a->batch || !a->out) {
        fprintf(stderr, "finch forward: --model, --batch and --out are required\n");
        usage(stderr);
        return 2;
    }
    if (strcmp(a->dtype, "f32") && strcmp(a->dtype, "bf16")) {
        fprintf(stderr, "finch forward: --dtype must be f32 or bf16\n");
        return 2;
    }
    if (a->full && a->adapter) {
        fprintf(stderr, "finch forward: --full and --adapter exclude each other\n");
        return 2;
    }
    return 0;
}

/* Reads an integer [B, T] tensor as int32. */
static int read_ids(const st_set *set, const char *path, const char *name, int64_t *B, int64_t *T, int32_t **out)
{
    const st_tensor *t = st_set_find(set, name);
    if (!t) return finch_error(FINCH_ERR_FORMAT, "%s: missing tensor '%s'", path, name);
    if (t->ndim != 2) return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' must have shape [batch, seq_len]", path, name);
    if (*B >= 0 && (t->shape[0] != *B || t->shape[1] != *T))
        return finch_error(FINCH_ERR_FORMAT, "%s: tensor '%s' has shape [%lld, %lld], input_ids has [%lld, %lld]", path, name,
                           (long long)t->shape[0], (long long)t->shape[1], (long long)*B, (long long)*T);
    *B = t->shape[0];
    *T = t->shape[1];
    *out = malloc((size_t)t->numel * sizeof(int32_t) + 1);
    if (!*out) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = st_to_i32(t, *out);
    if (rc) return finch_error_prefix(rc, "%s: tensor '%s': ", path, name);
    return FINCH_OK;
}

/* pixel_values [n_patches, patch_dim] f32 and image_grid_thw [n_images, 3] from the batch file, if present. */
static int read_pixels(const st_set *set, const char *path, float **pixels, int32_t **grids, int64_t *n_images,
                       int64_t *n_patches)
{
    const st_tensor *pv = st_set_find(set, "pixel_values"), *g = st_set_find(set, "image_grid_thw");
    if (!pv && !g) return FINCH_OK;
    if (!pv || !g || pv->ndim != 2 || g->ndim != 2 || g->shape[1] != 3)
        return finch_error(FINCH_ERR_FORMAT, "%s: images need both pixel_values [n_patches, patch_dim] and image_grid_thw "
                                             "[n_images, 3]", path);
    *pixels = malloc((size_t)pv->numel * sizeof(float) + 1);
    *grids = malloc((size_t)g->numel * sizeof(int32_t) + 1);
    if (!*pixels || !*grids) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    int rc = st_to_f32(pv, *pixels);
    if (!rc) rc = st_to_i32(g, *grids);
    if (rc) return finch_error_prefix(rc, "%s: ", path);
    *n_images = g->shape[0];
    *n_patches = pv->shape[0];
    return FINCH_OK;
}

static int run(const forward_args *a)
{
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    st_set *batch = NULL;
    int32_t *ids = NULL, *labels = NULL, *grids = NULL;
    float *logits = NULL, *values = NULL, *pixels = NULL;
    int64_t n_images = 0, n_patches = 0;
    st_entry *entries = NULL;
    char (*names)[300] = NULL;
    int64_t B = -1, T = -1, n_train = 0;

    int rc = finch_runtime_open(a->backend, &rt);
    if (!rc) {
        finch_load_options o = finch_load_options_default();
        o.compute_dtype = strcmp(a->dtype, "bf16") ? FINCH_DTYPE_F32 : FINCH_DTYPE_BF16;
        o.full_finetune = a->full;
        o.load_in_4bit = a->load_in_4bit;
        rc = finch_model_load(rt, a->model, &o, &m);
    }
    if (!rc && a->adapter) rc = finch_lora_load(m, a->adapter);
    if (!rc) rc = st_set_open_file(a->batch, &batch);
    if (!rc) rc = read_ids(batch, a->batch, "input_ids", &B, &T, &ids);
    if (!rc) rc = st_set_find(batch, "labels") ? read_ids(batch, a->batch, "labels", &B, &T, &labels) : FINCH_OK;
    if (!rc && a->n_images) {
        rc = finch_cli_load_images(a->model, a->processor, a->images, a->n_images, &pixels, &grids, &n_patches);
        n_images = a->n_images;
    } else if (!rc) {
        rc = read_pixels(batch, a->batch, &pixels, &grids, &n_images, &n_patches);
    }
    finch_model_info info;
    if (!rc) rc = finch_model_info_get(m, &info);
    finch_step_result res;
    if (!rc) {
        finch_batch b = {.batch = B, .seq_len = T, .input_ids = ids, .labels = labels, .segment_ids = NULL,
                         .pixel_values = pixels, .image_grid_thw = grids, .n_images = n_images, .n_patches = n_patches,
                         .text_positions = a->text_positions};
        finch_step_options so = {1, 0.0f};
        rc = a->grads ? finch_forward_backward(m, &b, &so, &res) : finch_forward(m, &b, &so, &res);
    }
    size_t n_logits = (size_t)(B * T * info.vocab_size);
    if (!rc) {
        logits = malloc(n_logits * sizeof(float) + 1);
        rc = logits ? (int)finch_model_logits(m, logits, n_logits) : finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    if (!rc && a->grads) n_train = finch_trainable_count(m);
    size_t total = 0;
    for (int64_t i = 0; !rc && i < n_train; i++) {
        finch_tensor_info ti;
        rc = finch_trainable_info(m, i, &ti);
        total += (size_t)ti.numel;
    }
    if (!rc) {
        entries = calloc((size_t)n_train + 2, sizeof *entries);
        names = calloc((size_t)n_train + 1, sizeof *names);
        values = malloc(total * sizeof(float) + 1);
        if (!entries || !names || !values) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    float loss = (float)res.loss;
    if (!rc) {
        entries[0] = (st_entry){"logits", ST_F32, 3, {B, T, info.vocab_size}, logits};
        entries[1] = (st_entry){"loss", ST_F32, 1, {1}, &loss};
    }
    float *at = values;
    for (int64_t i = 0; !rc && i < n_train; i++) {
        finch_tensor_info ti;
        rc = finch_trainable_info(m, i, &ti);
        if (!rc) rc = finch_trainable_grad_read(m, i, at, ti.numel);
        snprintf(names[i], sizeof names[i], "grad.%s", ti.name);
        st_entry *e = &entries[2 + i];
        e->name = names[i];
        e->dtype = ST_F32;
        e->ndim = ti.ndim;
        for (int d = 0; d < ti.ndim; d++) e->shape[d] = ti.shape[d];
        e->data = at;
        at += ti.numel;
    }
    if (!rc) rc = st_write(a->out, entries, (int)(2 + n_train), NULL);
    if (!rc) printf("loss %.6f over %lld tokens; wrote %s\n", res.loss, (long long)res.token_count, a->out);
    free(entries);
    free(names);
    free(values);
    free(logits);
    free(ids);
    free(labels);
    free(pixels);
    free(grids);
    if (batch) st_set_close(batch);
    finch_model_free(m);
    finch_runtime_close(rt);
    return rc;
}

int finch_cmd_forward(int argc, char **argv)
{
    forward_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    rc = run(&a);
    if (rc) {
        fprintf(stderr, "finch forward: %s\n", finch_last_error());
        return 1;
    }
    return 0;
}
