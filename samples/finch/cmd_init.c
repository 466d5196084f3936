/* finch init: a new model folder to train from scratch: config.json, model.safetensors with random
 * weights (normal, std 0.02; norms 1; biases 0), and a tokenizer (copied from --tokenizer DIR, or a
 * byte-level one finch writes). Llama-family layouts: llama, mistral, qwen2 (q/k/v biases), qwen3
 * (q/k norms). */
#include "core/error.h"
#include "core/fsutil.h"
#include "core/safetensors.h"
#include "finch/finch.h"
#include "samples/finch/commands.h"
#include "samples/finch/init_model.h"
#include "samples/finch/init_tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void init_spec_default(init_spec *s)
{
    memset(s, 0, sizeof *s);
    s->hidden = 64, s->layers = 2, s->heads = 4, s->max_position = 2048, s->rope_theta = 10000, s->init_std = 0.02, s->seed = 3407;
}

int init_spec_check(init_spec *a)
{
    if (!a->arch || (strcmp(a->arch, "llama") && strcmp(a->arch, "mistral") && strcmp(a->arch, "qwen2") && strcmp(a->arch, "qwen3")))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "--arch %s is not one of llama, mistral, qwen2, qwen3", a->arch ? a->arch : "(none)");
    if (!a->kv_heads) a->kv_heads = a->heads;
    if (!a->head_dim && a->heads > 0) a->head_dim = a->hidden / a->heads;
    if (!a->intermediate) a->intermediate = (a->hidden * 8 / 3 + 15) / 16 * 16;
    if (a->hidden < 1 || a->layers < 1 || a->heads < 1 || a->kv_heads < 1 || a->heads % a->kv_heads || a->head_dim < 2 ||
        a->head_dim % 2 || a->intermediate < 1 || a->max_position < 2 || !(a->init_std > 0))
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "sizes must be positive, heads a multiple of kv-heads and head-dim even");
    return FINCH_OK;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: finch init --arch llama|mistral|qwen2|qwen3 --out DIR [--hidden 64] [--layers 2] [--heads 4]\n"
               "                  [--kv-heads 2] [--head-dim hidden/heads] [--intermediate 8*hidden/3] [--max-position 2048]\n"
               "                  [--rope-theta 10000] [--init-std 0.02] [--seed 3407] [--untied] [--tokenizer DIR]\n"
               "Writes DIR/config.json, DIR/model.safetensors (random weights) and a tokenizer: the files of --tokenizer DIR\n"
               "(tokenizer.json, tokenizer_config.json, special_tokens_map.json), or a byte-level BPE tokenizer with ChatML\n"
               "special tokens and chat template.\n");
}

static int parse(int argc, char **argv, init_spec *a)
{
    init_spec_default(a);
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t *num = !strcmp(s, "--hidden") ? &a->hidden : !strcmp(s, "--layers") ? &a->layers : !strcmp(s, "--heads") ? &a->heads
                     : !strcmp(s, "--kv-heads") ? &a->kv_heads : !strcmp(s, "--head-dim") ? &a->head_dim
                     : !strcmp(s, "--intermediate") ? &a->intermediate : !strcmp(s, "--max-position") ? &a->max_position : NULL;
        const char **str = !strcmp(s, "--arch") ? &a->arch : !strcmp(s, "--out") ? &a->out : !strcmp(s, "--tokenizer") ? &a->tokenizer : NULL;
        double *dbl = !strcmp(s, "--rope-theta") ? &a->rope_theta : !strcmp(s, "--init-std") ? &a->init_std : NULL;
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            usage(stdout);
            return -1;
        } else if (!strcmp(s, "--untied")) {
            a->untied = 1;
            continue;
        } else if (!num && !str && !dbl && strcmp(s, "--seed")) {
            fprintf(stderr, "finch init: unknown argument '%s'\n", s);
            usage(stderr);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "finch init: %s needs a value\n", s);
            return 2;
        }
        char *end = NULL;
        i++;
        if (str) *str = v;
        else if (dbl) *dbl = strtod(v, &end);
        else if (num) *num = strtoll(v, &end, 10);
        else a->seed = strtoull(v, &end, 10);
        if (end && (*end || end == v)) {
            fprintf(stderr, "finch init: %s: '%s' is not a number\n", s, v);
            return 2;
        }
    }
    if (!a->arch || !a->out) {
        fprintf(stderr, "finch init: --arch and --out are required\n");
        usage(stderr);
        return 2;
    }
    if (init_spec_check(a)) {
        fprintf(stderr, "finch init: %s\n", finch_last_error());
        return 2;
    }
    return 0;
}

/* ---- weights ------------------------------------------------------------------------------------ */

typedef struct weights {
    st_entry *e;
    char (*names)[160];
    float **data;
    int n, cap;
    uint64_t rng;
} weights;

static double uniform01(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* kind: 'n' normal(0, std), '1' ones, '0' zeros. */
static int add_tensor(weights *w, const char *name, int64_t d0, int64_t d1, char kind, double std)
{
    if (w->n == w->cap) {
        int cap = w->cap ? w->cap * 2 : 64;
        st_entry *e = realloc(w->e, (size_t)cap * sizeof *e);
        char(*nm)[160] = realloc(w->names, (size_t)cap * sizeof *nm);
        float **d = realloc(w->data, (size_t)cap * sizeof *d);
        if (e) w->e = e;
        if (nm) w->names = nm;
        if (d) w->data = d;
        if (!e || !nm || !d) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
        w->cap = cap;
    }
    int64_t n = d0 * (d1 ? d1 : 1);
    float *v = malloc((size_t)n * sizeof(float));
    if (!v) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory for %s", name);
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = uniform01(&w->rng), u2 = uniform01(&w->rng), r = sqrt(-2.0 * log(u1));
        v[i] = kind == 'n' ? (float)(std * r * cos(2 * M_PI * u2)) : kind == '1' ? 1.0f : 0.0f;
        if (i + 1 < n) v[i + 1] = kind == 'n' ? (float)(std * r * sin(2 * M_PI * u2)) : kind == '1' ? 1.0f : 0.0f;
    }
    snprintf(w->names[w->n], sizeof w->names[w->n], "%s", name);
    w->data[w->n] = v;
    st_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->dtype = ST_F32;
    e->ndim = d1 ? 2 : 1;
    e->shape[0] = d0;
    e->shape[1] = d1;
    return FINCH_OK;
}

static int make_weights(const init_spec *a, int64_t vocab, weights *w)
{
    double s = a->init_std;
    int64_t H = a->hidden, q = a->heads * a->head_dim, kv = a->kv_heads * a->head_dim, I = a->intermediate;
    int qwen2 = !strcmp(a->arch, "qwen2"), qwen3 = !strcmp(a->arch, "qwen3");
    int rc = add_tensor(w, "model.embed_tokens.weight", vocab, H, 'n', s);
    char n[160];
    for (int64_t l = 0; !rc && l < a->layers; l++) {
#define T(suffix, d0, d1, kind) (snprintf(n, sizeof n, "model.layers.%lld.%s", (long long)l, suffix), add_tensor(w, n, d0, d1, kind, s))
        rc = T("input_layernorm.weight", H, 0, '1');
        if (!rc) rc = T("self_attn.q_proj.weight", q, H, 'n');
        if (!rc) rc = T("self_attn.k_proj.weight", kv, H, 'n');
        if (!rc) rc = T("self_attn.v_proj.weight", kv, H, 'n');
        if (!rc && qwen2) rc = T("self_attn.q_proj.bias", q, 0, '0');
        if (!rc && qwen2) rc = T("self_attn.k_proj.bias", kv, 0, '0');
        if (!rc && qwen2) rc = T("self_attn.v_proj.bias", kv, 0, '0');
        if (!rc && qwen3) rc = T("self_attn.q_norm.weight", a->head_dim, 0, '1');
        if (!rc && qwen3) rc = T("self_attn.k_norm.weight", a->head_dim, 0, '1');
        if (!rc) rc = T("self_attn.o_proj.weight", H, q, 'n');
        if (!rc) rc = T("post_attention_layernorm.weight", H, 0, '1');
        if (!rc) rc = T("mlp.gate_proj.weight", I, H, 'n');
        if (!rc) rc = T("mlp.up_proj.weight", I, H, 'n');
        if (!rc) rc = T("mlp.down_proj.weight", H, I, 'n');
#undef T
    }
    if (!rc) rc = add_tensor(w, "model.norm.weight", H, 0, '1', s);
    if (!rc && a->untied) rc = add_tensor(w, "lm_head.weight", vocab, H, 'n', s);
    for (int i = 0; i < w->n; i++) {
        w->e[i].name = w->names[i];
        w->e[i].data = w->data[i];
    }
    return rc;
}

static void free_weights(weights *w)
{
    for (int i = 0; i < w->n; i++) free(w->data[i]);
    free(w->data);
    free(w->names);
    free(w->e);
}

/* ---- files ------------------------------------------------------------------------------------- */

static int copy_file(const char *src_dir, const char *dst_dir, const char *name, int required)
{
    char src[4200], dst[4200];
    snprintf(src, sizeof src, "%s/%s", src_dir, name);
    snprintf(dst, sizeof dst, "%s/%s", dst_dir, name);
    FILE *f = fopen(src, "rb");
    if (!f) return required ? finch_error(FINCH_ERR_IO, "cannot open %s: %s", src, strerror(errno)) : FINCH_OK;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + len, 1, cap - len, f)) > 0;) {
        len += got;
        if (len == cap) {
            char *p = realloc(buf, cap *= 2);
            if (!p) free(buf);
            buf = p;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory copying %s", src);
    int rc = err ? finch_error(FINCH_ERR_IO, "cannot read %s", src) : finch_write_file_atomic(dst, buf, len);
    free(buf);
    return rc;
}

static int tokenizer_files(const init_spec *a, init_tokenizer_ids *ids)
{
    if (!a->tokenizer) return init_write_byte_tokenizer(a->out, a->max_position, ids);
    int rc = copy_file(a->tokenizer, a->out, "tokenizer.json", 1);
    if (!rc) rc = copy_file(a->tokenizer, a->out, "tokenizer_config.json", 0);
    if (!rc) rc = copy_file(a->tokenizer, a->out, "special_tokens_map.json", 0);
    finch_tokenizer *tok = NULL;
    if (!rc) rc = finch_tokenizer_load(a->out, &tok);
    if (rc) return rc;
    finch_tokenizer_config tc;
    finch_tokenizer_config_get(tok, &tc);
    ids->vocab_size = finch_tokenizer_vocab_size(tok);
    ids->bos_id = tc.bos_id;
    ids->eos_id = tc.eos_id;
    ids->pad_id = tc.pad_id;
    finch_tokenizer_free(tok);
    return FINCH_OK;
}

static void add_id(cJSON *o, const char *key, int32_t id)
{
    if (id >= 0) cJSON_AddNumberToObject(o, key, id);
    else cJSON_AddNullToObject(o, key);
}

static int write_config(const init_spec *a, const init_tokenizer_ids *ids)
{
    static const struct { const char *arch, *cls; } classes[] = {
        {"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}, {"qwen3", "Qwen3ForCausalLM"}};
    const char *cls = "";
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++)
        if (!strcmp(classes[i].arch, a->arch)) cls = classes[i].cls;
    cJSON *c = cJSON_CreateObject(), *archs = cJSON_CreateArray();
    cJSON_AddItemToArray(archs, cJSON_CreateString(cls));
    cJSON_AddItemToObject(c, "architectures", archs);
    cJSON_AddStringToObject(c, "model_type", a->arch);
    cJSON_AddNumberToObject(c, "hidden_size", (double)a->hidden);
    cJSON_AddNumberToObject(c, "intermediate_size", (double)a->intermediate);
    cJSON_AddNumberToObject(c, "num_hidden_layers", (double)a->layers);
    cJSON_AddNumberToObject(c, "num_attention_heads", (double)a->heads);
    cJSON_AddNumberToObject(c, "num_key_value_heads", (double)a->kv_heads);
    cJSON_AddNumberToObject(c, "head_dim", (double)a->head_dim);
    cJSON_AddStringToObject(c, "hidden_act", "silu");
    cJSON_AddNumberToObject(c, "max_position_embeddings", (double)a->max_position);
    cJSON_AddNumberToObject(c, "rms_norm_eps", 1e-6);
    cJSON_AddNumberToObject(c, "rope_theta", a->rope_theta);
    cJSON_AddNumberToObject(c, "initializer_range", a->init_std);
    cJSON_AddBoolToObject(c, "tie_word_embeddings", !a->untied);
    cJSON_AddNumberToObject(c, "vocab_size", ids->vocab_size);
    add_id(c, "bos_token_id", ids->bos_id);
    add_id(c, "eos_token_id", ids->eos_id);
    add_id(c, "pad_token_id", ids->pad_id);
    cJSON_AddBoolToObject(c, "attention_bias", !strcmp(a->arch, "qwen2"));
    cJSON_AddFalseToObject(c, "mlp_bias");
    if (!strcmp(a->arch, "mistral") || !strcmp(a->arch, "qwen2") || !strcmp(a->arch, "qwen3")) {
        cJSON_AddNullToObject(c, "sliding_window");
        cJSON_AddFalseToObject(c, "use_sliding_window");
    }
    cJSON_AddStringToObject(c, "torch_dtype", "float32");
    cJSON_AddStringToObject(c, "transformers_version", "4.46.0");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    if (!text) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory");
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", a->out);
    int rc = finch_write_file_atomic(path, text, strlen(text));
    free(text);
    return rc;
}

int init_model_write(const init_spec *a, char *summary, size_t size)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", a->out);
    FILE *f = fopen(path, "r");
    if (f) {
        fclose(f);
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "%s already holds a model (config.json); choose another --out", a->out);
    }
    init_tokenizer_ids ids;
    weights w;
    memset(&w, 0, sizeof w);
    w.rng = a->seed * 0xD1B54A32D192ED03ull + 1;
    int rc = finch_mkdirs(a->out);
    if (!rc) rc = tokenizer_files(a, &ids);
    if (!rc) rc = make_weights(a, ids.vocab_size, &w);
    if (!rc) {
        snprintf(path, sizeof path, "%s/model.safetensors", a->out);
        const char *meta[] = {"format", "pt", NULL};
        rc = st_write(path, w.e, w.n, meta);
    }
    /* config.json last: a folder without it is not a model, so a failure leaves no half model. */
    if (!rc) rc = write_config(a, &ids);
    int64_t params = 0;
    for (int i = 0; i < w.n; i++) params += w.e[i].shape[0] * (w.e[i].ndim > 1 ? w.e[i].shape[1] : 1);
    free_weights(&w);
    if (!rc && summary)
        snprintf(summary, size, "%s model in %s: %lld layers, hidden %lld, %lld heads (%lld kv), vocab %d, %lld parameters; tokenizer %s", a->arch,
                 a->out, (long long)a->layers, (long long)a->hidden, (long long)a->heads, (long long)a->kv_heads, ids.vocab_size, (long long)params,
                 a->tokenizer ? a->tokenizer : "byte-level (written by finch)");
    return rc;
}

int finch_cmd_init(int argc, char **argv)
{
    init_spec a;
    int rc = parse(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    char summary[4600];
    if (init_model_write(&a, summary, sizeof summary)) {
        fprintf(stderr, "finch init: %s\n", finch_last_error());
        return 1;
    }
    printf("finch init: %s\n", summary);
    return 0;
}
