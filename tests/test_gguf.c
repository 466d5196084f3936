/* GGUF: block layouts against blocks built by hand from llama.cpp's documented layouts, quantisation
 * error per type, writer + reader round trip (key/values, tensors of every type, alignment, offsets),
 * and the metadata and transforms of an exported model (names, Q/K permutation, Gemma's 1 + w norms,
 * tokenizer keys of a byte-level BPE and a SentencePiece-style tokenizer, the LoRA adapter keys). */
#include "core/gguf.h"
#include "core/half.h"
#include "core/safetensors.h"
#include "finch/export.h"
#include "tests/export_models.h"

#include <unistd.h>

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v & 0xff);
    p[1] = (unsigned char)(v >> 8);
}

static void check_hand_blocks(void)
{
    float y[256];
    /* q4_0: d = 0.5; q[j] = j | (15 - j) << 4  ->  x[j] = (j - 8) d, x[j + 16] = (7 - j) d */
    unsigned char q40[18];
    put16(q40, 0x3800);
    for (int j = 0; j < 16; j++) q40[2 + j] = (unsigned char)(j | ((15 - j) << 4));
    gguf_dequantize(GGML_Q4_0, q40, 32, y);
    int ok = 1;
    for (int j = 0; j < 16; j++) ok &= y[j] == 0.5f * (float)(j - 8) && y[j + 16] == 0.5f * (float)(7 - j);
    CHECK(ok, "q4_0 hand block");
    /* q8_0: d = 2, q[j] = j - 16 */
    unsigned char q80[34];
    put16(q80, 0x4000);
    for (int j = 0; j < 32; j++) q80[2 + j] = (unsigned char)(int8_t)(j - 16);
    gguf_dequantize(GGML_Q8_0, q80, 32, y);
    ok = 1;
    for (int j = 0; j < 32; j++) ok &= y[j] == 2.0f * (float)(j - 16);
    CHECK(ok, "q8_0 hand block");
    /* q4_K: d = 1, dmin = 0.5; sub-block j has scale j + 1 and min 2j (six bits: j < 4 in bytes j, j+4;
       j >= 4 low nibbles in byte j+4 (of 8..11), high two bits in the top of bytes j-4 and j);
       value 64c + l has level l % 16 (low nibble, sub-block 2c), 64c + 32 + l level 15 - l % 16 */
    unsigned char q4k[144] = {0};
    put16(q4k, 0x3C00);
    put16(q4k + 2, 0x3800);
    int sc[8], mn[8];
    for (int j = 0; j < 8; j++) sc[j] = 40 + j, mn[j] = 2 * j + 33;
    unsigned char *s = q4k + 4;
    for (int j = 0; j < 4; j++) {
        s[j] = (unsigned char)(sc[j] | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (unsigned char)(mn[j] | ((mn[j + 4] >> 4) << 6));
        s[j + 8] = (unsigned char)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) q4k[16 + 32 * c + l] = (unsigned char)((l % 16) | ((15 - l % 16) << 4));
    gguf_dequantize(GGML_Q4_K, q4k, 256, y);
    ok = 1;
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            ok &= y[64 * c + l] == (float)(sc[2 * c] * (l % 16)) - 0.5f * (float)mn[2 * c];
            ok &= y[64 * c + 32 + l] == (float)(sc[2 * c + 1] * (15 - l % 16)) - 0.5f * (float)mn[2 * c + 1];
        }
    CHECK(ok, "q4_K hand block");
    /* q5_K: as q4_K plus the fifth bit of value 64c + l in bit 2c of qh[l], of 64c + 32 + l in bit 2c + 1 */
    unsigned char q5k[176] = {0};
    memcpy(q5k, q4k, 16);
    for (int l = 0; l < 32; l++) q5k[16 + l] = (unsigned char)(l & 1 ? 0xAA : 0x55);  /* odd l: high sub-blocks */
    memcpy(q5k + 48, q4k + 16, 128);
    gguf_dequantize(GGML_Q5_K, q5k, 256, y);
    ok = 1;
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            int lo = l % 16 + (l & 1 ? 0 : 16), hi = 15 - l % 16 + (l & 1 ? 16 : 0);
            ok &= y[64 * c + l] == (float)(sc[2 * c] * lo) - 0.5f * (float)mn[2 * c];
            ok &= y[64 * c + 32 + l] == (float)(sc[2 * c + 1] * hi) - 0.5f * (float)mn[2 * c + 1];
        }
    CHECK(ok, "q5_K hand block");
    /* q6_K: ql[128] qh[64] scales[16] d; scale k = k - 8; level of value v (six bits) = v % 64 */
    unsigned char q6k[210] = {0};
    for (int k = 0; k < 16; k++) q6k[192 + k] = (unsigned char)(int8_t)(k - 8);
    put16(q6k + 208, 0x3400);  /* 0.25 */
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            int v[4];
            for (int i = 0; i < 4; i++) v[i] = (128 * h + l + 32 * i) % 64;
            q6k[64 * h + l] = (unsigned char)((v[0] & 15) | ((v[2] & 15) << 4));
            q6k[64 * h + l + 32] = (unsigned char)((v[1] & 15) | ((v[3] & 15) << 4));
            q6k[128 + 32 * h + l] = (unsigned char)((v[0] >> 4) | ((v[1] >> 4) << 2) | ((v[2] >> 4) << 4) | ((v[3] >> 4) << 6));
        }
    gguf_dequantize(GGML_Q6_K, q6k, 256, y);
    ok = 1;
    for (int v = 0; v < 256; v++) ok &= y[v] == 0.25f * (float)(v / 16 - 8) * (float)(v % 64 - 32);
    CHECK(ok, "q6_K hand block");
}

static void check_errors(void)
{
    enum { N = 256 * 64 };
    static float x[N], y[N];
    static unsigned char b[N * 4];
    testing_fill_random(x, N, 5);
    for (int i = 0; i < N; i += 2) {  /* roughly Gaussian: sum of two uniforms, with a few outliers */
        x[i] = 0.5f * (x[i] + x[i + 1]);
        if (i % 997 == 0) x[i] *= 6;
    }
    static const struct { int type; double bound; } t[] = {{GGML_F32, 0}, {GGML_F16, 1e-3}, {GGML_BF16, 5e-3}, {GGML_Q8_0, 1e-2},
                                                          {GGML_Q6_K, 3e-2}, {GGML_Q5_K, 5e-2}, {GGML_Q4_K, 0.1}, {GGML_Q4_0, 0.12}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        gguf_quantize(t[i].type, x, N, b);
        gguf_dequantize(t[i].type, b, N, y);
        double e = testing_rel_err(y, x, N);
        CHECK(e <= t[i].bound, "%s: relative error %.3g above %.3g", gguf_type_name(t[i].type), e, t[i].bound);
        printf("%-5s %6.3f bits/weight, relative error %.2e\n", gguf_type_name(t[i].type), 8.0 * (double)gguf_row_bytes(t[i].type, N) / N, e);
    }
}

static void check_round_trip(void)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/roundtrip.gguf", testing_tmp_dir());
    gguf_writer *w = NULL;
    const char *strs[] = {"a", "", "ünï"};
    int32_t ints[] = {1, -2, 3};
    float fl[] = {0.5f, -1.25f};
    int rc = gguf_writer_new(&w) || gguf_set_str(w, "general.architecture", "llama") || gguf_set_u32(w, "x.u32", 7) ||
             gguf_set_i32(w, "x.i32", -7) || gguf_set_f32(w, "x.f32", 2.5f) || gguf_set_bool(w, "x.bool", 1) ||
             gguf_set_arr_str(w, "x.strs", strs, 3) || gguf_set_arr_i32(w, "x.ints", ints, 3) || gguf_set_arr_f32(w, "x.floats", fl, 2);
    CHECK(rc == 0, "writer keys: %s", finch_last_error());
    CHECK(gguf_set_u32(w, "x.u32", 8) != 0, "a key set twice was accepted");
    static const int types[] = {GGML_F32, GGML_F16, GGML_BF16, GGML_Q8_0, GGML_Q4_0, GGML_Q4_K, GGML_Q5_K, GGML_Q6_K};
    enum { NT = sizeof types / sizeof types[0], COLS = 256, ROWS = 3 };
    static float x[NT][COLS * ROWS];
    static unsigned char blocks[NT][COLS * ROWS * 4];
    for (int i = 0; i < NT && !rc; i++) {
        char name[32];
        snprintf(name, sizeof name, "t.%s", gguf_type_name(types[i]));
        int64_t ne[2] = {COLS, ROWS};
        rc = gguf_add_tensor(w, name, types[i], 2, ne);
    }
    int64_t bad[2] = {48, 1};
    CHECK(gguf_add_tensor(w, "bad", GGML_Q4_K, 2, bad) != 0, "a row of 48 values accepted for q4_K");
    if (!rc) rc = gguf_write_begin(w, path);
    for (int i = 0; i < NT && !rc; i++) {
        testing_fill_random(x[i], COLS * ROWS, 100 + (unsigned)i);
        gguf_quantize(types[i], x[i], COLS * ROWS, blocks[i]);
        rc = gguf_write_tensor(w, blocks[i], gguf_row_bytes(types[i], COLS * ROWS));
    }
    if (!rc) rc = gguf_write_end(w);
    gguf_writer_free(w);
    CHECK(rc == 0, "writing %s: %s", path, finch_last_error());
    gguf_file *f = NULL;
    rc = gguf_open(path, &f);
    CHECK(rc == 0, "reading %s: %s", path, finch_last_error());
    if (rc) return;
    uint32_t u;
    float fv;
    int bv;
    const char *sv;
    size_t len;
    CHECK(!gguf_get_u32(f, "x.u32", &u) && u == 7, "x.u32");
    CHECK(gguf_get_u32(f, "x.i32", &u) != 0, "a negative i32 read as u32");
    CHECK(!gguf_get_f32(f, "x.f32", &fv) && fv == 2.5f, "x.f32");
    CHECK(!gguf_get_bool(f, "x.bool", &bv) && bv == 1, "x.bool");
    CHECK(!gguf_get_str(f, "general.architecture", &sv, &len) && len == 5 && !memcmp(sv, "llama", 5), "general.architecture");
    const gguf_kv *kv = gguf_find_kv(f, "x.strs");
    CHECK(kv && kv->type == GGUF_ARRAY && kv->arr_type == GGUF_STRING && kv->n == 3, "x.strs");
    if (kv && kv->n == 3) {
        gguf_kv_arr_str(kv, 2, &sv, &len);
        CHECK(len == strlen("ünï") && !memcmp(sv, "ünï", len), "x.strs[2]");
    }
    kv = gguf_find_kv(f, "x.ints");
    CHECK(kv && kv->arr_type == GGUF_I32 && kv->n == 3 && !memcmp(kv->data, ints, sizeof ints), "x.ints");
    CHECK(gguf_tensor_count(f) == NT, "%d tensors", gguf_tensor_count(f));
    const unsigned char *first = NULL;
    for (int i = 0; i < NT && i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (!first) first = t->data;
        CHECK(t->type == types[i] && t->ne[0] == COLS && t->ne[1] == ROWS && t->n_dims == 2, "tensor %s header", t->name);
        CHECK(((const unsigned char *)t->data - first) % GGUF_ALIGNMENT == 0, "tensor %s is not aligned", t->name);
        CHECK(!memcmp(t->data, blocks[i], t->bytes), "tensor %s data", t->name);
    }
    gguf_close(f);
    /* a truncated file is an error, not a crash */
    FILE *in = fopen(path, "rb");
    static unsigned char buf[1 << 16];
    size_t n = in ? fread(buf, 1, sizeof buf, in) : 0;
    if (in) fclose(in);
    for (size_t cut = 8; cut < n; cut = cut * 3 / 2 + 1) {
        finch_write_file_atomic(path, buf, cut);
        f = NULL;
        CHECK(gguf_open(path, &f) != 0, "a file cut at %zu bytes opened", cut);
        gguf_close(f);
    }
    remove(path);
}

/* Exported metadata and transforms, read back with the reader. */
static void check_export(finch_runtime *rt)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/gguf-llama3", testing_tmp_dir());
    char tok[4096];
    snprintf(tok, sizeof tok, "%s/tokenizers/llama3", testing_shared_dir());
    int rc = make_golden_shaped_model(dir, "llama", tok, NULL, 9);
    finch_model *m = NULL;
    if (!rc) rc = finch_model_load(rt, dir, NULL, &m);
    CHECK(rc == 0, "llama3-vocab model: %s", finch_last_error());
    if (rc) return;
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    finch_gguf_options o = finch_gguf_options_default();
    o.type = FINCH_GGUF_F32;
    rc = finch_export_gguf(m, path, &o);
    CHECK(rc == 0, "export: %s", finch_last_error());
    gguf_file *f = NULL;
    if (!rc) rc = gguf_open(path, &f);
    CHECK(rc == 0, "read: %s", finch_last_error());
    if (!rc) {
        const char *s;
        size_t len;
        uint32_t u;
        CHECK(!gguf_get_str(f, "tokenizer.ggml.model", &s, &len) && len == 4 && !memcmp(s, "gpt2", 4), "tokenizer.ggml.model gpt2");
        CHECK(!gguf_get_str(f, "tokenizer.ggml.pre", &s, &len) && len == 9 && !memcmp(s, "llama-bpe", 9), "tokenizer.ggml.pre llama-bpe");
        CHECK(!gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &u) && u == 128000, "bos id");
        CHECK(!gguf_get_u32(f, "llama.block_count", &u) && u == 2, "block_count");
        CHECK(!gguf_get_u32(f, "llama.rope.dimension_count", &u) && u == 16, "rope dimension");
        const gguf_kv *tokens = gguf_find_kv(f, "tokenizer.ggml.tokens"), *merges = gguf_find_kv(f, "tokenizer.ggml.merges");
        CHECK(tokens && tokens->n == 128256, "tokens: %llu", tokens ? (unsigned long long)tokens->n : 0ULL);
        CHECK(merges && merges->n > 200000, "merges");
        if (tokens && tokens->n > 128000) {
            gguf_kv_arr_str(tokens, 128000, &s, &len);
            CHECK(len == strlen("<|begin_of_text|>") && !memcmp(s, "<|begin_of_text|>", len), "token 128000");
        }
        const gguf_kv *types = gguf_find_kv(f, "tokenizer.ggml.token_type");
        int32_t t0 = 0, tb = 0;
        if (types && types->n > 128000) {
            memcpy(&t0, types->data, 4);
            memcpy(&tb, types->data + 4 * 128000, 4);
        }
        CHECK(t0 == 1 && tb == 3, "token types: normal %d, control %d", t0, tb);
        CHECK(gguf_find_tensor(f, "rope_freqs.weight") != NULL, "llama3 RoPE scaling needs rope_freqs.weight");
        CHECK(gguf_find_tensor(f, "output.weight") == NULL, "a tied model has no output.weight");
        /* Q/K rows: GGUF row h*hd + 2i + j is checkpoint row h*hd + j*hd/2 + i */
        const gguf_tensor *q = gguf_find_tensor(f, "blk.1.attn_k.weight");
        st_set *st = NULL;
        char mdir[4200];
        snprintf(mdir, sizeof mdir, "%s", dir);
        if (q && !st_set_open_dir(mdir, &st)) {
            const st_tensor *k = st_set_find(st, "model.layers.1.self_attn.k_proj.weight");
            float *ck = malloc((size_t)k->numel * 4), *gg = malloc((size_t)q->numel * 4);
            st_to_f32(k, ck);
            gguf_tensor_f32(q, gg);
            int64_t hd = 16, cols = k->shape[1], heads = k->shape[0] / hd, bad = 0;
            for (int64_t h = 0; h < heads; h++)
                for (int64_t i = 0; i < hd / 2; i++)
                    for (int j = 0; j < 2; j++)
                        bad += memcmp(gg + (h * hd + 2 * i + j) * cols, ck + (h * hd + j * hd / 2 + i) * cols, (size_t)cols * 4) != 0;
            CHECK(bad == 0, "attn_k rows are not llama.cpp's permutation (%lld rows differ)", (long long)bad);
            free(ck);
            free(gg);
            st_set_close(st);
        }
        gguf_close(f);
    }
    finch_model_free(m);
    remove(path);

    /* gemma: norms stored as 1 + w; a SentencePiece-style tokenizer as "llama" with scores */
    snprintf(dir, sizeof dir, "%s/gguf-gemma", testing_tmp_dir());
    snprintf(tok, sizeof tok, "%s/tokenizers/llama2", testing_shared_dir());
    rc = make_golden_shaped_model(dir, "gemma", tok, NULL, 10);
    m = NULL;
    if (!rc) rc = finch_model_load(rt, dir, NULL, &m);
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    if (!rc) rc = finch_export_gguf(m, path, &o);
    f = NULL;
    if (!rc) rc = gguf_open(path, &f);
    CHECK(rc == 0, "gemma export: %s", finch_last_error());
    if (!rc) {
        const char *s;
        size_t len;
        CHECK(!gguf_get_str(f, "tokenizer.ggml.model", &s, &len) && len == 5 && !memcmp(s, "llama", 5), "tokenizer.ggml.model llama");
        const gguf_kv *scores = gguf_find_kv(f, "tokenizer.ggml.scores");
        CHECK(scores && scores->n == 32000 && scores->arr_type == GGUF_F32, "scores");
        const gguf_tensor *n0 = gguf_find_tensor(f, "blk.0.attn_norm.weight");
        st_set *st = NULL;
        if (n0 && !st_set_open_dir(dir, &st)) {
            const st_tensor *w = st_set_find(st, "model.layers.0.input_layernorm.weight");
            float a[64], b[64];
            st_to_f32(w, a);
            gguf_tensor_f32(n0, b);
            int ok = 1;
            for (int i = 0; i < 64; i++) ok &= b[i] == a[i] + 1.0f;
            CHECK(ok, "gemma norms are not stored as 1 + w");
            st_set_close(st);
        }
        gguf_close(f);
    }
    char mf[4200];
    snprintf(mf, sizeof mf, "%s/model.Modelfile", dir);
    char *text = NULL;
    CHECK(finch_read_file(mf, &text, NULL) == 0 && strstr(text, "FROM ./model.gguf"), "Modelfile");
    free(text);
    remove(mf);
    remove(path);
    finch_model_free(m);
}

static void check_lora_keys(finch_runtime *rt)
{
    char model[4096], adapter[4096], path[4200];
    snprintf(model, sizeof model, "%s/golden/qwen2/model", testing_shared_dir());
    snprintf(adapter, sizeof adapter, "%s/golden/qwen2/adapter", testing_shared_dir());
    snprintf(path, sizeof path, "%s/lora.gguf", testing_tmp_dir());
    finch_model *m = NULL;
    int rc = finch_model_load(rt, model, NULL, &m) || finch_lora_load(m, adapter) || finch_export_gguf_lora(m, path, FINCH_GGUF_F32);
    CHECK(rc == 0, "lora export: %s", finch_last_error());
    gguf_file *f = NULL;
    if (!rc && !gguf_open(path, &f)) {
        const char *s;
        size_t len;
        float alpha;
        finch_model_info info;
        finch_model_info_get(m, &info);
        CHECK(!gguf_get_str(f, "general.type", &s, &len) && len == 7 && !memcmp(s, "adapter", 7), "general.type adapter");
        CHECK(!gguf_get_str(f, "adapter.type", &s, &len) && len == 4 && !memcmp(s, "lora", 4), "adapter.type lora");
        CHECK(!gguf_get_f32(f, "adapter.lora.alpha", &alpha) && alpha > 0, "adapter.lora.alpha");
        const gguf_tensor *a = gguf_find_tensor(f, "blk.0.attn_q.weight.lora_a"), *b = gguf_find_tensor(f, "blk.0.attn_q.weight.lora_b");
        CHECK(a && b && a->ne[0] == info.hidden_size && a->ne[1] == b->ne[0] && b->ne[1] == info.n_heads * info.head_dim,
              "lora_a ne [in, r], lora_b ne [r, out]");
        gguf_close(f);
    }
    finch_export_report r;
    if (!rc) rc = finch_gguf_verify(m, path, &r);
    CHECK(rc == 0 && r.is_adapter && r.logits_rel_err < 1e-5, "lora verify: %s (%.3g)", rc ? finch_last_error() : "", rc ? 0 : r.logits_rel_err);
    remove(path);
    finch_model_free(m);
}

/* --verify's numbers for each type on a golden with its adapter. */
static void check_verify(finch_runtime *rt)
{
    char model[4096], adapter[4096], path[4200];
    snprintf(model, sizeof model, "%s/golden/falcon/model", testing_shared_dir());
    snprintf(adapter, sizeof adapter, "%s/golden/falcon/adapter", testing_shared_dir());
    finch_model *m = NULL;
    int rc = finch_model_load(rt, model, NULL, &m) || finch_lora_load(m, adapter);
    CHECK(rc == 0, "falcon: %s", finch_last_error());
    static const struct { finch_gguf_type t; double bound; } types[] = {{FINCH_GGUF_F32, 1e-5}, {FINCH_GGUF_F16, 2e-3}, {FINCH_GGUF_BF16, 1e-2},
                                                                       {FINCH_GGUF_Q8_0, 3e-2}, {FINCH_GGUF_Q6_K, 5e-2}, {FINCH_GGUF_Q5_K_M, 8e-2},
                                                                       {FINCH_GGUF_Q4_K_M, 0.15}, {FINCH_GGUF_Q4_0, 0.15}};
    for (size_t i = 0; !rc && i < sizeof types / sizeof types[0]; i++) {
        snprintf(path, sizeof path, "%s/verify-%s.gguf", testing_tmp_dir(), finch_gguf_type_name(types[i].t));
        finch_gguf_options o = finch_gguf_options_default();
        o.type = types[i].t;
        o.modelfile = 0;
        finch_export_report r;
        int e = finch_export_gguf(m, path, &o) || finch_gguf_verify(m, path, &r);
        CHECK(e == 0, "%s: %s", path, finch_last_error());
        if (!e) {
            CHECK(r.logits_rel_err <= types[i].bound, "%s: logits error %.3g above %.3g", path, r.logits_rel_err, types[i].bound);
            printf("falcon %-7s logits error %.2e;", finch_gguf_type_name(types[i].t), r.logits_rel_err);
            for (int k = 0; k < r.n_types; k++) printf(" %s %.2e", r.types[k].type, r.types[k].rel_err);
            printf("\n");
        }
        remove(path);
    }
    /* nothing half-written when the folder cannot be written */
    finch_gguf_options o = finch_gguf_options_default();
    snprintf(path, sizeof path, "%s/no-such-dir/x.gguf", testing_tmp_dir());
    CHECK(finch_export_gguf(m, path, &o) == FINCH_ERR_IO, "an unwritable path");
    finch_model_free(m);
}

int main(void)
{
    check_hand_blocks();
    check_errors();
    check_round_trip();
    finch_runtime *rt = NULL;
    if (finch_runtime_open("cpu", &rt)) return 1;
    check_export(rt);
    check_lora_keys(rt);
    check_verify(rt);
    finch_runtime_close(rt);
    return testing_finish();
}
