/* bitsandbytes 4-bit checkpoints: the written schema, bit-exact re-reading and re-writing, a file
 * built by hand per the schema, sharded weights, quantization_config, and every corrupt variant. */
#include "core/bnb_checkpoint.h"
#include "core/half.h"
#include "core/nf4.h"
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[600];

static void path_of(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

static st_tensor mem_tensor(const char *name, st_dtype dt, int64_t rows, int64_t cols, const void *data)
{
    st_tensor t = {.name = name, .dtype = dt, .ndim = 2, .shape = {rows, cols}, .numel = rows * cols, .data = data};
    t.nbytes = (size_t)t.numel * st_dtype_size(dt);
    return t;
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, fp);
    fclose(fp);
    return b;
}

static int same_weight(const nf4_weight *a, const nf4_weight *b)
{
    int64_t n = nf4_weight_numel(a), nb = nf4_weight_blocks(a);
    if (a->type != b->type || a->rows != b->rows || a->cols != b->cols || a->blocksize != b->blocksize || a->dtype != b->dtype ||
        a->nested != b->nested || memcmp(a->code, b->code, sizeof a->code) || memcmp(a->packed, b->packed, (size_t)nf4_packed_bytes(n)) ||
        memcmp(a->absmax, b->absmax, (size_t)nb * 4))
        return 0;
    if (!a->nested) return 1;
    return a->nested_blocksize == b->nested_blocksize && !memcmp(&a->nested_offset, &b->nested_offset, 4) &&
           !memcmp(a->qabsmax, b->qabsmax, (size_t)nb) &&
           !memcmp(a->nested_absmax, b->nested_absmax, (size_t)nf4_n_blocks(nb, a->nested_blocksize) * 4) &&
           !memcmp(a->nested_code, b->nested_code, sizeof a->nested_code);
}

static int json_tensor_is(const st_set *s, const char *name, const char *text)
{
    const st_tensor *t = st_set_find(s, name);
    return t && t->dtype == ST_U8 && t->ndim == 1 && t->nbytes == strlen(text) && !memcmp(t->data, text, t->nbytes);
}

/* Three weights (NF4 with double quant across 2 nested blocks, NF4 with odd n, FP4) and a dense norm. */
static void test_write_read_rewrite(void)
{
    enum { R1 = 130, C1 = 200, R2 = 7, C2 = 9, R3 = 16, C3 = 16 };
    float *f = malloc(R1 * C1 * 4);
    uint16_t *bf = malloc(R1 * C1 * 2), h[R3 * C3];
    testing_fill_random(f, R1 * C1, 21);
    for (int i = 0; i < R1 * C1; i++) bf[i] = finch_f32_to_bf16(f[i] * (float)(1 + i / 4000));
    for (int i = 0; i < R3 * C3; i++) h[i] = finch_f32_to_f16(f[i]);
    st_tensor t1 = mem_tensor("a", ST_BF16, R1, C1, bf), t2 = mem_tensor("b", ST_BF16, R2, C2, bf + 5),
              t3 = mem_tensor("c", ST_F16, R3, C3, h);
    nf4_weight w[3];
    CHECK(nf4_quantize_st_tensor(&t1, NF4_TYPE_NF4, 64, 1, &w[0]) == FINCH_OK, "q1: %s", finch_last_error());
    CHECK(nf4_quantize_st_tensor(&t2, NF4_TYPE_NF4, 32, 0, &w[1]) == FINCH_OK, "q2: %s", finch_last_error());
    CHECK(nf4_quantize_st_tensor(&t3, NF4_TYPE_FP4, 64, 0, &w[2]) == FINCH_OK, "q3: %s", finch_last_error());
    float norm[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    st_entry extra = {.name = "model.norm.weight", .dtype = ST_F32, .ndim = 1, .shape = {8}, .data = norm};
    const char *names[3] = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight", "lm.fp4.weight"};
    bnb_named_weight nw[3] = {{names[0], &w[0]}, {names[1], &w[1]}, {names[2], &w[2]}};
    char p1[700], p2[700];
    path_of(p1, sizeof p1, "bnb1.safetensors");
    path_of(p2, sizeof p2, "bnb2.safetensors");
    CHECK(bnb_write(p1, nw, 3, &extra, 1) == FINCH_OK, "write: %s", finch_last_error());

    st_set *s = NULL;
    CHECK(st_set_open_file(p1, &s) == FINCH_OK, "open: %s", finch_last_error());
    if (!s) goto out;
    /* the schema, tensor by tensor */
    CHECK(st_set_count(s) == 6 + 4 + 4 + 1, "tensor count %d", st_set_count(s));
    const st_tensor *t = st_set_find(s, names[0]);
    CHECK(t && t->dtype == ST_U8 && t->ndim == 2 && t->shape[0] == R1 * C1 / 2 && t->shape[1] == 1, "packed weight U8 [n/2, 1]");
    t = st_set_find(s, "model.layers.0.self_attn.q_proj.weight.absmax");
    CHECK(t && t->dtype == ST_U8 && t->ndim == 1 && t->shape[0] == 407, "double-quantised absmax U8 [407]");
    t = st_set_find(s, "model.layers.0.self_attn.q_proj.weight.nested_absmax");
    CHECK(t && t->dtype == ST_F32 && t->shape[0] == 2, "nested_absmax F32 [2]");
    t = st_set_find(s, "model.layers.0.self_attn.q_proj.weight.nested_quant_map");
    CHECK(t && t->dtype == ST_F32 && t->shape[0] == 256, "nested_quant_map F32 [256]");
    t = st_set_find(s, "model.layers.0.self_attn.q_proj.weight.quant_map");
    CHECK(t && t->dtype == ST_F32 && t->shape[0] == 16 && !memcmp(t->data, nf4_code_table(NF4_TYPE_NF4), 64), "quant_map is the NF4 table");
    t = st_set_find(s, "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4");
    const char *head = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [130, 200], "
                       "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": ";
    CHECK(t && t->nbytes > strlen(head) && !memcmp(t->data, head, strlen(head)), "DQ quant_state JSON");
    if (t && t->nbytes > strlen(head)) {
        char num[64] = {0};
        memcpy(num, (const char *)t->data + strlen(head), t->nbytes - strlen(head) - 1 < 63 ? t->nbytes - strlen(head) - 1 : 63);
        CHECK((float)strtod(num, NULL) == w[0].nested_offset && ((const char *)t->data)[t->nbytes - 1] == '}', "nested_offset %s", num);
    }
    CHECK(json_tensor_is(s, "model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4",
                         "{\"quant_type\": \"nf4\", \"blocksize\": 32, \"dtype\": \"bfloat16\", \"shape\": [7, 9]}"), "plain quant_state JSON");
    t = st_set_find(s, "model.layers.0.mlp.down_proj.weight");
    CHECK(t && t->nbytes == 32, "odd n = 63 packs into 32 bytes");
    t = st_set_find(s, "model.layers.0.mlp.down_proj.weight.absmax");
    CHECK(t && t->dtype == ST_F32 && t->shape[0] == 2, "plain absmax F32 [2]");
    CHECK(!st_set_find(s, "model.layers.0.mlp.down_proj.weight.nested_absmax"), "no nested tensors without double quant");
    CHECK(json_tensor_is(s, "lm.fp4.weight.quant_state.bitsandbytes__fp4",
                         "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [16, 16]}"), "fp4 quant_state JSON");
    CHECK(bnb_weight_is_quantized(s, names[0]) && bnb_weight_is_quantized(s, names[2]) && !bnb_weight_is_quantized(s, "model.norm.weight"),
          "is_quantized");

    /* bit-exact re-read, and a byte-identical re-write */
    nf4_weight back[3];
    memset(back, 0, sizeof back);
    for (int i = 0; i < 3; i++) {
        CHECK(bnb_load_weight(s, names[i], &back[i]) == FINCH_OK, "load %s: %s", names[i], finch_last_error());
        CHECK(back[i].packed && same_weight(&w[i], &back[i]), "%s re-reads bit-exactly", names[i]);
    }
    bnb_named_weight nb[3] = {{names[0], &back[0]}, {names[1], &back[1]}, {names[2], &back[2]}};
    CHECK(bnb_write(p2, nb, 3, &extra, 1) == FINCH_OK, "rewrite: %s", finch_last_error());
    size_t l1 = 0, l2 = 0;
    unsigned char *b1 = read_all(p1, &l1), *b2 = read_all(p2, &l2);
    CHECK(b1 && b2 && l1 == l2 && !memcmp(b1, b2, l1), "re-written file is byte-identical (%zu vs %zu bytes)", l1, l2);
    free(b1);
    free(b2);
    for (int i = 0; i < 3; i++) nf4_weight_free(&back[i]);
    st_set_close(s);
out:
    for (int i = 0; i < 3; i++) nf4_weight_free(&w[i]);
    remove(p1);
    remove(p2);
    free(f);
    free(bf);
}

/* ---- a checkpoint assembled by hand per the schema (not by bnb_write) ---------------------------- */

enum { HN = 150, HNB = 3 };
static uint8_t h_packed[HN / 2], h_qabs[HNB];
static float h_qmap[16], h_nabs[1], h_nmap[256], h_absmax_f32[HNB];
static char h_json[256];

/* A valid double-quantised NF4 weight "x.weight" [3, 50] (3 blocks of 64, 1 nested block). */
static int hand_entries(st_entry *e)
{
    for (int i = 0; i < HN / 2; i++) h_packed[i] = (uint8_t)(i * 37 + 11);
    h_qabs[0] = 255; h_qabs[1] = 128; h_qabs[2] = 0;
    h_nabs[0] = 0.25f;
    nf4_stored_quant_map(NF4_TYPE_NF4, h_qmap);
    nf4_dynamic_map(h_nmap);
    snprintf(h_json, sizeof h_json, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 50], "
                                    "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5}");
    e[0] = (st_entry){.name = "x.weight", .dtype = ST_U8, .ndim = 2, .shape = {HN / 2, 1}, .data = h_packed};
    e[1] = (st_entry){.name = "x.weight.absmax", .dtype = ST_U8, .ndim = 1, .shape = {HNB}, .data = h_qabs};
    e[2] = (st_entry){.name = "x.weight.quant_map", .dtype = ST_F32, .ndim = 1, .shape = {16}, .data = h_qmap};
    e[3] = (st_entry){.name = "x.weight.nested_absmax", .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = h_nabs};
    e[4] = (st_entry){.name = "x.weight.nested_quant_map", .dtype = ST_F32, .ndim = 1, .shape = {256}, .data = h_nmap};
    e[5] = (st_entry){.name = "x.weight.quant_state.bitsandbytes__nf4", .dtype = ST_U8, .ndim = 1, .shape = {(int64_t)strlen(h_json)}, .data = h_json};
    return 6;
}

static int load_file(const char *file, const char *name, nf4_weight *w)
{
    st_set *s = NULL;
    int rc = st_set_open_file(file, &s);
    if (!rc) rc = bnb_load_weight(s, name, w);
    st_set_close(s);
    return rc;
}

static void test_hand_built(void)
{
    st_entry e[8];
    int n = hand_entries(e);
    char p[700];
    path_of(p, sizeof p, "hand.safetensors");
    CHECK(st_write(p, e, n, NULL) == FINCH_OK, "write");
    nf4_weight w;
    CHECK(load_file(p, "x.weight", &w) == FINCH_OK, "load: %s", finch_last_error());
    if (w.packed) {
        CHECK(w.type == NF4_TYPE_NF4 && w.rows == 3 && w.cols == 50 && w.blocksize == 64 && w.dtype == FINCH_DTYPE_BF16 &&
                  w.nested && w.nested_blocksize == 256 && w.nested_offset == 0.5f, "fields");
        CHECK(!memcmp(w.packed, h_packed, sizeof h_packed), "packed bytes");
        /* absmax = map[q] * 0.25 + 0.5: 1.0 -> 0.75; map[128] = 5.5e-7; map[0] = -0.99296875 */
        CHECK(w.absmax[0] == 0.75f && w.absmax[1] == h_nmap[128] * 0.25f + 0.5f && w.absmax[2] == h_nmap[0] * 0.25f + 0.5f,
              "decoded absmax %.9g %.9g %.9g", (double)w.absmax[0], (double)w.absmax[1], (double)w.absmax[2]);
        float out[HN];
        nf4_weight_dequantize(&w, out);
        /* element 0 is the high nibble of byte 11 = 0x0B -> code 0 (-1.0); element 1 -> code 11 */
        CHECK(out[0] == -1.0f * 0.75f && out[1] == nf4_code_table(NF4_TYPE_NF4)[11] * 0.75f, "dequant %g %g", (double)out[0], (double)out[1]);
        int64_t i = 140; /* block 2 */
        int q = (i & 1) ? h_packed[i / 2] & 15 : h_packed[i / 2] >> 4;
        CHECK(out[i] == nf4_code_table(NF4_TYPE_NF4)[q] * w.absmax[2], "dequant in block 2");
    }
    nf4_weight_free(&w);

    /* a nested map 1 ulp from ours is accepted and decoded as stored (bitsandbytes uses the stored one) */
    h_nmap[0] = nextafterf(h_nmap[0], 0.0f);
    snprintf(h_json, sizeof h_json, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [3, 50], "
                                    "\"nested_blocksize\": 256, \"nested_offset\": 0.0}");
    e[5].shape[0] = (int64_t)strlen(h_json);
    CHECK(st_write(p, e, n, NULL) == FINCH_OK, "write");
    CHECK(load_file(p, "x.weight", &w) == FINCH_OK, "ulp-off map: %s", finch_last_error());
    CHECK(w.absmax && w.absmax[2] == h_nmap[0] * 0.25f && w.dtype == FINCH_DTYPE_F32, "decoded with the stored map");
    nf4_weight_free(&w);

    /* no double quantisation, packed bytes stored as BF16 (bnb_4bit_quant_storage = bfloat16) */
    h_absmax_f32[0] = 2.0f; h_absmax_f32[1] = 0.0f; h_absmax_f32[2] = 1e-3f;
    snprintf(h_json, sizeof h_json, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 50]}");
    st_entry plain[4] = {
        {.name = "y.weight", .dtype = ST_BF16, .ndim = 2, .shape = {HN / 4, 1}, .data = h_packed},
        {.name = "y.weight.absmax", .dtype = ST_F32, .ndim = 1, .shape = {HNB}, .data = h_absmax_f32},
        {.name = "y.weight.quant_map", .dtype = ST_F32, .ndim = 1, .shape = {16}, .data = h_qmap},
        {.name = "y.weight.quant_state.bitsandbytes__nf4", .dtype = ST_U8, .ndim = 1, .shape = {(int64_t)strlen(h_json)}, .data = h_json},
    };
    /* 150 elements pack into 75 bytes, not a whole number of bf16: 37 bf16 (74 bytes) must be rejected */
    CHECK(st_write(p, plain, 4, NULL) == FINCH_OK, "write");
    CHECK(load_file(p, "y.weight", &w) == FINCH_ERR_FORMAT && strstr(finch_last_error(), "y.weight"), "74 bytes: %s", finch_last_error());
    snprintf(h_json, sizeof h_json, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4, 50]}");
    plain[3].shape[0] = (int64_t)strlen(h_json);
    plain[0].shape[0] = 50; /* 200 elements = 100 bytes = 50 bf16 */
    float abs4[4] = {2.0f, 0.0f, 1e-3f, 1.0f};
    plain[1].shape[0] = 4;
    plain[1].data = abs4;
    uint8_t bytes100[100];
    for (int i = 0; i < 100; i++) bytes100[i] = (uint8_t)(i * 13);
    plain[0].data = bytes100;
    CHECK(st_write(p, plain, 4, NULL) == FINCH_OK, "write");
    CHECK(load_file(p, "y.weight", &w) == FINCH_OK, "bf16 storage: %s", finch_last_error());
    CHECK(w.packed && !memcmp(w.packed, bytes100, 100) && !w.nested && w.absmax[1] == 0.0f && w.absmax[3] == 1.0f, "bf16 storage bytes");
    nf4_weight_free(&w);

    /* FP4 as bitsandbytes saves it: quant_map = k/12 in f32 */
    float fmap[16];
    nf4_stored_quant_map(NF4_TYPE_FP4, fmap);
    snprintf(h_json, sizeof h_json, "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4, 50]}");
    plain[2].data = fmap;
    plain[3].name = "y.weight.quant_state.bitsandbytes__fp4";
    CHECK(st_write(p, plain, 4, NULL) == FINCH_OK, "write");
    CHECK(load_file(p, "y.weight", &w) == FINCH_OK && w.type == NF4_TYPE_FP4 &&
              !memcmp(w.code, nf4_code_table(NF4_TYPE_FP4), 64), "fp4: %s", finch_last_error());
    nf4_weight_free(&w);
    remove(p);
    nf4_dynamic_map(h_nmap);
}

/* The parts of one weight spread over two shards of a sharded checkpoint. */
static void test_sharded(void)
{
    st_entry e[8];
    hand_entries(e);
    char sub[700], p[800];
    path_of(sub, sizeof sub, "sharded");
    mkdir(sub, 0755);
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", sub);
    CHECK(st_write(p, e, 3, NULL) == FINCH_OK, "shard 1");
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", sub);
    CHECK(st_write(p, e + 3, 3, NULL) == FINCH_OK, "shard 2");
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", sub);
    FILE *fp = fopen(p, "w");
    if (fp) {
        fprintf(fp, "{\"metadata\": {}, \"weight_map\": {");
        for (int i = 0; i < 6; i++) fprintf(fp, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "", e[i].name, i < 3 ? 1 : 2);
        fprintf(fp, "}}");
        fclose(fp);
    }
    st_set *s = NULL;
    nf4_weight w = {0};
    CHECK(st_set_open_dir(sub, &s) == FINCH_OK, "open dir: %s", finch_last_error());
    CHECK(s && bnb_load_weight(s, "x.weight", &w) == FINCH_OK && w.absmax && w.absmax[0] == 0.75f, "cross-shard load: %s", finch_last_error());
    nf4_weight_free(&w);
    st_set_close(s);
    remove(p);
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", sub);
    remove(p);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", sub);
    remove(p);
    rmdir(sub);
}

/* ---- corrupt variants -------------------------------------------------------------------------- */

typedef void (*mutate_fn)(st_entry *e, int *n);

static void expect_bad(const char *label, mutate_fn mutate, int status, const char *needle)
{
    static int serial;
    st_entry e[8];
    int n = hand_entries(e);
    mutate(e, &n);
    char file[64], p[700];
    snprintf(file, sizeof file, "corrupt%d.safetensors", serial++);
    path_of(p, sizeof p, file);
    if (st_write(p, e, n, NULL) != FINCH_OK) { CHECK(0, "%s: write failed: %s", label, finch_last_error()); return; }
    nf4_weight w;
    memset(&w, 0xAB, sizeof w);
    int rc = load_file(p, "x.weight", &w);
    const char *msg = finch_last_error();
    CHECK(rc == status, "%s: status %d, expected %d (%s)", label, rc, status, msg);
    CHECK(strstr(msg, needle) != NULL, "%s: message '%s' lacks '%s'", label, msg, needle);
    CHECK(strstr(msg, file) != NULL, "%s: message '%s' does not name the file", label, msg);
    CHECK(w.packed == NULL && w.absmax == NULL && w.qabsmax == NULL, "%s: nothing left allocated", label);
    remove(p);
}

static void drop(st_entry *e, int *n, const char *name)
{
    for (int i = 0; i < *n; i++)
        if (!strcmp(e[i].name, name)) { e[i] = e[--*n]; return; }
}

static void set_json(st_entry *e, const char *text)
{
    snprintf(h_json, sizeof h_json, "%s", text);
    e[5].shape[0] = (int64_t)strlen(h_json);
}

static void m_qmap(st_entry *e, int *n) { (void)e; (void)n; h_qmap[5] += 0.01f; }
static void m_qmap_fp4(st_entry *e, int *n) { (void)n; nf4_stored_quant_map(NF4_TYPE_FP4, h_qmap); (void)e; }
static void m_nmap(st_entry *e, int *n) { (void)e; (void)n; h_nmap[10] *= 1.01f; }
static void m_no_absmax(st_entry *e, int *n) { drop(e, n, "x.weight.absmax"); }
static void m_no_qmap(st_entry *e, int *n) { drop(e, n, "x.weight.quant_map"); }
static void m_no_nabs(st_entry *e, int *n) { drop(e, n, "x.weight.nested_absmax"); }
static void m_no_nmap(st_entry *e, int *n) { drop(e, n, "x.weight.nested_quant_map"); }
static void m_no_state(st_entry *e, int *n) { drop(e, n, "x.weight.quant_state.bitsandbytes__nf4"); }
static void m_no_packed(st_entry *e, int *n) { drop(e, n, "x.weight"); }
static void m_absmax_f32(st_entry *e, int *n) { (void)n; e[1].dtype = ST_F32; e[1].data = h_absmax_f32; }
static void m_absmax_len(st_entry *e, int *n) { (void)n; e[1].shape[0] = 2; }
static void m_packed_len(st_entry *e, int *n) { (void)n; e[0].shape[0] = HN / 2 - 1; }
static void m_shape(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 51], \"nested_blocksize\": 256, \"nested_offset\": 0.5}"); }
static void m_shape1d(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [150], \"nested_blocksize\": 256, \"nested_offset\": 0.5}"); }
static void m_shape_neg(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [-3, -50], \"nested_blocksize\": 256, \"nested_offset\": 0.5}"); }
static void m_not_json(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 64,"); }
static void m_type(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 50], \"nested_blocksize\": 256, \"nested_offset\": 0.5}"); }
static void m_blocksize(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"bfloat16\", \"shape\": [3, 50], \"nested_blocksize\": 256, \"nested_offset\": 0.5}"); }
static void m_no_offset(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 50], \"nested_blocksize\": 256}"); }
static void m_offset_str(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 50], \"nested_blocksize\": 256, \"nested_offset\": \"0.5\"}"); }
static void m_no_nested_json(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 50]}"); }
static void m_dtype(st_entry *e, int *n) { (void)n; set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"int8\", \"shape\": [3, 50], \"nested_blocksize\": 256, \"nested_offset\": 0.5}"); }
static void m_empty_json(st_entry *e, int *n) { (void)n; set_json(e, ""); }
static void m_state_f32(st_entry *e, int *n) { (void)n; e[5].dtype = ST_F32; e[5].shape[0] = 4; }
static void m_both_states(st_entry *e, int *n) { e[*n] = e[5]; e[*n].name = "x.weight.quant_state.bitsandbytes__fp4"; ++*n; }
static void m_nabs_nan(st_entry *e, int *n) { (void)e; (void)n; h_nabs[0] = NAN; }
static void m_extra_nested(st_entry *e, int *n)
{
    (void)n;
    set_json(e, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 50]}");
    e[1].dtype = ST_F32; e[1].data = h_absmax_f32;
}

static void test_corrupt(void)
{
    expect_bad("quant_map off by 0.01", m_qmap, FINCH_ERR_FORMAT, "x.weight.quant_map");
    expect_bad("quant_map entry named", m_qmap, FINCH_ERR_FORMAT, "entry 5");
    expect_bad("FP4 map under an nf4 state", m_qmap_fp4, FINCH_ERR_FORMAT, "x.weight.quant_map");
    expect_bad("nested_quant_map off by 1%", m_nmap, FINCH_ERR_FORMAT, "x.weight.nested_quant_map");
    expect_bad("missing absmax", m_no_absmax, FINCH_ERR_FORMAT, "'x.weight.absmax' is missing");
    expect_bad("missing quant_map", m_no_qmap, FINCH_ERR_FORMAT, "'x.weight.quant_map' is missing");
    expect_bad("missing nested_absmax", m_no_nabs, FINCH_ERR_FORMAT, "'x.weight.nested_absmax' is missing");
    expect_bad("missing nested_quant_map", m_no_nmap, FINCH_ERR_FORMAT, "'x.weight.nested_quant_map' is missing");
    expect_bad("missing packed weight", m_no_packed, FINCH_ERR_FORMAT, "'x.weight' (the packed weight) is missing");
    expect_bad("F32 absmax with a nested state", m_absmax_f32, FINCH_ERR_FORMAT, "x.weight.absmax");
    expect_bad("absmax too short", m_absmax_len, FINCH_ERR_FORMAT, "x.weight.absmax");
    expect_bad("packed weight too short", m_packed_len, FINCH_ERR_FORMAT, "packs into 75");
    expect_bad("JSON shape disagrees", m_shape, FINCH_ERR_FORMAT, "x.weight");
    expect_bad("JSON shape 1-D", m_shape1d, FINCH_ERR_FORMAT, "shape");
    expect_bad("JSON shape negative", m_shape_neg, FINCH_ERR_FORMAT, "shape");
    expect_bad("not JSON", m_not_json, FINCH_ERR_FORMAT, "JSON");
    expect_bad("empty JSON", m_empty_json, FINCH_ERR_FORMAT, "JSON");
    expect_bad("quant_type vs tensor name", m_type, FINCH_ERR_FORMAT, "quant_type");
    expect_bad("blocksize 48", m_blocksize, FINCH_ERR_FORMAT, "blocksize");
    expect_bad("nested_offset missing", m_no_offset, FINCH_ERR_FORMAT, "nested_offset");
    expect_bad("nested_offset a string", m_offset_str, FINCH_ERR_FORMAT, "nested_offset");
    expect_bad("nested tensors, state without nested fields", m_no_nested_json, FINCH_ERR_FORMAT, "x.weight.absmax");
    expect_bad("stray nested tensors", m_extra_nested, FINCH_ERR_FORMAT, "no nested_* fields");
    expect_bad("unsupported dtype", m_dtype, FINCH_ERR_UNSUPPORTED, "int8");
    expect_bad("quant_state not U8", m_state_f32, FINCH_ERR_FORMAT, "JSON");
    expect_bad("nf4 and fp4 states", m_both_states, FINCH_ERR_FORMAT, "both");
    expect_bad("no quant_state", m_no_state, FINCH_ERR_FORMAT, "not a bitsandbytes 4-bit weight");
    expect_bad("NaN nested_absmax", m_nabs_nan, FINCH_ERR_FORMAT, "not finite");
}

/* ---- config.json -------------------------------------------------------------------------------- */

static int parse_config(const char *json, bnb_config *c)
{
    cJSON *root = cJSON_Parse(json);
    int rc = bnb_config_parse(root, "test/config.json", c);
    cJSON_Delete(root);
    return rc;
}

static void expect_config(const char *json, int status, const char *needle)
{
    bnb_config c;
    int rc = parse_config(json, &c);
    CHECK(rc == status, "config %s: status %d, expected %d (%s)", json, rc, status, finch_last_error());
    CHECK(!needle || strstr(finch_last_error(), needle), "config %s: message '%s' lacks '%s'", json, finch_last_error(), needle);
    if (needle) CHECK(strstr(finch_last_error(), "test/config.json") != NULL, "message names the file: %s", finch_last_error());
}

static void test_config(void)
{
    bnb_config c;
    CHECK(parse_config("{\"model_type\": \"llama\", \"quantization_config\": {\"_load_in_4bit\": true, \"_load_in_8bit\": false, "
                       "\"bnb_4bit_compute_dtype\": \"bfloat16\", \"bnb_4bit_quant_storage\": \"uint8\", \"bnb_4bit_quant_type\": \"nf4\", "
                       "\"bnb_4bit_use_double_quant\": true, \"llm_int8_enable_fp32_cpu_offload\": false, \"llm_int8_has_fp16_weight\": false, "
                       "\"llm_int8_skip_modules\": null, \"llm_int8_threshold\": 6.0, \"load_in_4bit\": true, \"load_in_8bit\": false, "
                       "\"quant_method\": \"bitsandbytes\"}}", &c) == FINCH_OK, "unsloth-style config: %s", finch_last_error());
    CHECK(c.quantized && c.quant_type == NF4_TYPE_NF4 && c.double_quant && c.compute_dtype == FINCH_DTYPE_BF16 &&
              !strcmp(c.quant_storage, "uint8"), "fields");
    CHECK(parse_config("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}}", &c) == FINCH_OK &&
              c.quantized && c.quant_type == NF4_TYPE_FP4 && !c.double_quant && c.compute_dtype == FINCH_DTYPE_F32, "bitsandbytes defaults (fp4)");
    CHECK(parse_config("{\"quantization_config\": {\"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"nf4\", "
                       "\"bnb_4bit_compute_dtype\": \"torch.float16\", \"bnb_4bit_quant_storage\": \"bfloat16\"}}", &c) == FINCH_OK &&
              c.quantized && c.quant_type == NF4_TYPE_NF4 && c.compute_dtype == FINCH_DTYPE_F16 && !strcmp(c.quant_storage, "bfloat16"),
          "legacy config without quant_method: %s", finch_last_error());
    CHECK(parse_config("{\"model_type\": \"llama\"}", &c) == FINCH_OK && !c.quantized, "no quantization_config");
    CHECK(parse_config("{\"quantization_config\": null}", &c) == FINCH_OK && !c.quantized, "null quantization_config");

    expect_config("{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 128}}", FINCH_ERR_UNSUPPORTED, "'gptq' (GPTQ)");
    expect_config("{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, \"version\": \"gemm\"}}", FINCH_ERR_UNSUPPORTED, "'awq' (AWQ)");
    expect_config("{\"quantization_config\": {\"quant_method\": \"fp8\"}}", FINCH_ERR_UNSUPPORTED, "'fp8'");
    expect_config("{\"quantization_config\": {\"quant_method\": \"mystery\"}}", FINCH_ERR_UNSUPPORTED, "'mystery' (unknown scheme)");
    expect_config("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_8bit\": true}}", FINCH_ERR_UNSUPPORTED, "8-bit");
    expect_config("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\"}}", FINCH_ERR_FORMAT, "load_in_4bit");
    expect_config("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": \"yes\"}}", FINCH_ERR_FORMAT, "load_in_4bit");
    expect_config("{\"quantization_config\": 3}", FINCH_ERR_FORMAT, "not an object");
    expect_config("{\"quantization_config\": {\"bits\": 4}}", FINCH_ERR_FORMAT, "quant_method");
    expect_config("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"int4\"}}",
                  FINCH_ERR_UNSUPPORTED, "int4");
    expect_config("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_use_double_quant\": 1}}",
                  FINCH_ERR_FORMAT, "bnb_4bit_use_double_quant");
    expect_config("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_compute_dtype\": \"float8\"}}",
                  FINCH_ERR_UNSUPPORTED, "float8");
    expect_config("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_quant_storage\": \"int64\"}}",
                  FINCH_ERR_UNSUPPORTED, "bnb_4bit_quant_storage");

    /* written by us, read back */
    bnb_config w = {.quantized = 1, .quant_type = NF4_TYPE_NF4, .double_quant = 1, .compute_dtype = FINCH_DTYPE_BF16, .quant_storage = "uint8"};
    cJSON *root = cJSON_Parse("{\"model_type\": \"llama\", \"quantization_config\": {\"quant_method\": \"gptq\"}}");
    CHECK(bnb_config_add_to_json(&w, root) == FINCH_OK, "add");
    CHECK(bnb_config_parse(root, "x", &c) == FINCH_OK && !memcmp(&c, &w, sizeof c), "config round trip: %s", finch_last_error());
    char *text = cJSON_PrintUnformatted(root);
    char p[700];
    path_of(p, sizeof p, "config.json");
    FILE *fp = fopen(p, "w");
    if (fp) { fputs(text, fp); fclose(fp); }
    free(text);
    cJSON_Delete(root);
    CHECK(bnb_config_load(p, &c) == FINCH_OK && !memcmp(&c, &w, sizeof c), "config file round trip: %s", finch_last_error());
    fp = fopen(p, "w");
    if (fp) { fputs("{\"quantization_config\": {\"quant_method\": \"awq\"}}", fp); fclose(fp); }
    CHECK(bnb_config_load(p, &c) == FINCH_ERR_UNSUPPORTED && strstr(finch_last_error(), p) && strstr(finch_last_error(), "AWQ"),
          "awq file: %s", finch_last_error());
    fp = fopen(p, "w");
    if (fp) { fputs("{\"quantization_config\": ", fp); fclose(fp); }
    CHECK(bnb_config_load(p, &c) == FINCH_ERR_FORMAT && strstr(finch_last_error(), p), "truncated file: %s", finch_last_error());
    remove(p);
    CHECK(bnb_config_load(p, &c) == FINCH_ERR_IO, "missing file");
}

int main(void)
{
    snprintf(dir, sizeof dir, "%s", testing_tmp_dir());
    test_write_read_rewrite();
    test_hand_built();
    test_sharded();
    test_corrupt();
    test_config();
    return testing_finish();
}
