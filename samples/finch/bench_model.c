/* Random-weight Llama checkpoints and device-memory counting for the benchmarks (bench_model.h). */
#include "samples/finch/bench_model.h"

#include "core/error.h"
#include "core/runtime.h"
#include "core/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double bench_weight_bytes(const bench_shape *s, double elem_size)
{
    double hd = (double)(s->hidden / s->heads), H = (double)s->hidden;
    double layer = 2 * H * s->heads * hd + 2 * H * s->kv_heads * hd + 3 * H * s->intermediate + 2 * H;
    return ((s->tied ? 1 : 2) * (double)s->vocab * H + (double)s->layers * layer + H) * elem_size;
}

static int enough_space(const char *dir, double bytes)
{
    struct statvfs v;
    return dir && *dir && statvfs(dir, &v) == 0 && (double)v.f_bavail * (double)v.f_frsize > bytes * 1.05;
}

int bench_make_dir(const char *dir_opt, double bytes, const char *tag, char *out, size_t size)
{
    const char *candidates[] = {dir_opt, "/dev/shm", getenv("TMPDIR"), "/tmp"};
    const char *base = NULL;
    for (size_t i = 0; i < 4 && !base; i++)
        if (candidates[i] && (i == 0 || enough_space(candidates[i], bytes))) base = candidates[i];
    snprintf(out, size, "%s/finch-bench-%s-%d", base ? base : "/tmp", tag, (int)getpid());
    if (!base || mkdir(out, 0755)) {
        fprintf(stderr, "finch bench %s: no folder with room for %.1f GB (tried --dir, /dev/shm, $TMPDIR, /tmp)\n", tag, bytes / 1e9);
        return 1;
    }
    return 0;
}

void bench_remove_dir(const char *dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

typedef struct tensor_list {
    st_entry *e;
    char (*names)[96];
    int n;
    st_dtype dtype;
    size_t esize;
    double bytes;
} tensor_list;

/* A [d0] (d1 == 0) or [d0, d1] tensor whose values are read from data. */
static void add(tensor_list *t, const char *name, int64_t d0, int64_t d1, const void *data)
{
    st_entry *e = &t->e[t->n];
    snprintf(t->names[t->n], sizeof t->names[t->n], "%s", name);
    e->name = t->names[t->n];
    e->dtype = t->dtype;
    e->ndim = d1 ? 2 : 1;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->data = data;
    t->bytes += (double)d0 * (double)(d1 ? d1 : 1) * (double)t->esize;
    t->n++;
}

int bench_write_llama(const char *dir, const bench_shape *s, int bf16, double *file_bytes)
{
    int64_t hd = s->hidden / s->heads, H = s->hidden;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "finch bench: cannot create %s\n", path);
        return 1;
    }
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %lld, \"intermediate_size\": %lld,"
               " \"num_hidden_layers\": %lld, \"num_attention_heads\": %lld, \"num_key_value_heads\": %lld, \"head_dim\": %lld,"
               " \"vocab_size\": %lld, \"max_position_embeddings\": 8192, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0,"
               " \"hidden_act\": \"silu\", \"tie_word_embeddings\": %s, \"torch_dtype\": \"%s\", \"bos_token_id\": 1, \"eos_token_id\": 2}\n",
            (long long)H, (long long)s->intermediate, (long long)s->layers, (long long)s->heads, (long long)s->kv_heads, (long long)hd,
            (long long)s->vocab, s->tied ? "true" : "false", bf16 ? "bfloat16" : "float32");
    if (fclose(f)) {
        fprintf(stderr, "finch bench: cannot write %s\n", path);
        return 1;
    }

    /* One block of random values serves every tensor (the largest is vocab x hidden); norms are 1. */
    size_t es = bf16 ? 2 : 4, big = (size_t)(s->vocab * H);
    if ((size_t)(s->intermediate * H) > big) big = (size_t)(s->intermediate * H);
    if ((size_t)(s->heads * hd * H) > big) big = (size_t)(s->heads * hd * H);
    unsigned char *rnd = malloc(big * es), *ones = malloc((size_t)H * es);
    int n = (int)(3 + s->layers * 9);
    st_entry *e = calloc((size_t)n, sizeof *e);
    char (*names)[96] = calloc((size_t)n, sizeof *names);
    if (!rnd || !ones || !e || !names) {
        free(rnd);
        free(ones);
        free(e);
        free(names);
        fprintf(stderr, "finch bench: out of host memory for %zu random values\n", big);
        return 1;
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < big; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        float v = ((float)(x >> 40) / 16777216.0f - 0.5f) * 0.04f;
        uint32_t u;
        memcpy(&u, &v, 4);
        if (bf16) {
            uint16_t h = (uint16_t)(u >> 16);
            memcpy(rnd + 2 * i, &h, 2);
        } else {
            memcpy(rnd + 4 * i, &v, 4);
        }
    }
    for (int64_t i = 0; i < H; i++) {
        float one = 1.0f;
        uint16_t h = 0x3F80;
        if (bf16) memcpy(ones + 2 * i, &h, 2);
        else memcpy(ones + 4 * i, &one, 4);
    }
    tensor_list tl = {e, names, 0, bf16 ? ST_BF16 : ST_F32, es, 0};
    char nm[96];
    add(&tl, "model.embed_tokens.weight", s->vocab, H, rnd);
    for (int64_t l = 0; l < s->layers; l++) {
        static const char *const norms[2] = {"input_layernorm", "post_attention_layernorm"};
        static const char *const lin[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
        const int64_t rows[7] = {s->heads * hd, s->kv_heads * hd, s->kv_heads * hd, H, s->intermediate, s->intermediate, H};
        const int64_t cols[7] = {H, H, H, s->heads * hd, H, H, s->intermediate};
        for (int i = 0; i < 2; i++) {
            snprintf(nm, sizeof nm, "model.layers.%lld.%s.weight", (long long)l, norms[i]);
            add(&tl, nm, H, 0, ones);
        }
        for (int i = 0; i < 7; i++) {
            snprintf(nm, sizeof nm, "model.layers.%lld.%s.weight", (long long)l, lin[i]);
            add(&tl, nm, rows[i], cols[i], rnd);
        }
    }
    add(&tl, "model.norm.weight", H, 0, ones);
    if (!s->tied) add(&tl, "lm_head.weight", s->vocab, H, rnd);
    *file_bytes = tl.bytes;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *meta[] = {"format", "pt", NULL};
    int rc = st_write(path, e, tl.n, meta);
    if (rc) fprintf(stderr, "finch bench: writing %s: %s\n", path, finch_last_error());
    free(rnd);
    free(ones);
    free(e);
    free(names);
    return rc ? 1 : 0;
}

/* ---- device memory: the plugin table with counting alloc/free ------------------------------- */

typedef struct alloc_slot {
    const finch_plugin_buffer *buf;
    size_t bytes;
} alloc_slot;

/* Live buffers, a plain list: a step allocates from finch's arena, so alloc/free are rare. */
static const finch_plugin_api *plugin;
static finch_plugin_api counting;
static alloc_slot *slots;
static size_t n_slots, cap_slots;
static uint64_t live, peak;

static int remember(const finch_plugin_buffer *b, size_t bytes)
{
    if (n_slots == cap_slots) {
        size_t cap = cap_slots ? 2 * cap_slots : 1024;
        alloc_slot *p = realloc(slots, cap * sizeof *p);
        if (!p) return 0;
        slots = p;
        cap_slots = cap;
    }
    slots[n_slots++] = (alloc_slot){b, bytes};
    live += bytes;
    if (live > peak) peak = live;
    return 1;
}

static void forget(const finch_plugin_buffer *b)
{
    for (size_t i = n_slots; i-- > 0;)
        if (slots[i].buf == b) {
            live -= slots[i].bytes;
            slots[i] = slots[--n_slots];
            return;
        }
}

static int counting_alloc(finch_plugin_device *dev, size_t bytes, finch_plugin_buffer **out)
{
    int rc = plugin->alloc(dev, bytes, out);
    if (!rc && !remember(*out, bytes)) {
        plugin->free(dev, *out);
        return FINCH_ERR_OUT_OF_MEMORY;
    }
    return rc;
}

static void counting_free(finch_plugin_device *dev, finch_plugin_buffer *buf)
{
    forget(buf);
    plugin->free(dev, buf);
}

void bench_count_device_memory(finch_runtime *rt)
{
    plugin = rt->backend.api;
    counting = *plugin;
    counting.alloc = counting_alloc;
    counting.free = counting_free;
    rt->backend.api = &counting;
}

uint64_t bench_device_live(void) { return live; }
uint64_t bench_device_peak(void) { return peak; }
void bench_device_reset_peak(void) { peak = live; }

int bench_trainer_open(finch_model *m, const int32_t *ids, int64_t B, int64_t T, int rank, finch_optimizer optim,
                       int64_t max_steps, finch_trainer **out, finch_train_data **data)
{
    *out = NULL;
    *data = NULL;
    finch_example *ex = calloc((size_t)B, sizeof *ex);
    if (!ex) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int64_t b = 0; b < B; b++) {
        ex[b].ids = (finch_tokens){(int32_t *)ids + b * T, (size_t)T, (size_t)T};
        ex[b].labels = ex[b].ids;
    }
    int rc = finch_train_data_from_examples(ex, (size_t)B, data);
    free(ex);
    if (rc) return rc;
    finch_trainer_config tc = finch_trainer_config_default();
    tc.max_steps = max_steps;
    tc.per_device_train_batch_size = (int)B;
    tc.gradient_accumulation_steps = 1;
    tc.learning_rate = 1e-4;
    tc.lr_scheduler_type = FINCH_LR_CONSTANT;
    tc.weight_decay = 0.01;
    tc.max_grad_norm = 0;
    tc.optim = optim;
    tc.shuffle = 0;
    tc.max_seq_length = T;
    tc.lora.r = rank;
    tc.lora.alpha = (float)rank;
    tc.lora.dropout = 0;
    tc.lora.target_modules = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    rc = finch_trainer_open(m, &tc, *data, out);
    if (rc) {
        finch_train_data_free(*data);
        *data = NULL;
    }
    return rc;
}
