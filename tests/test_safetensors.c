/* safetensors reader/writer: round trip, sharded sets, and every kind of corrupt file. */
#include "core/error.h"
#include "core/safetensors.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[512];

static void path_of(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (fp) { fwrite(data, 1, n, fp); fclose(fp); }
}

/* A file made of a header (as given) and `data_len` zero bytes. */
static void write_raw(const char *path, const char *header, size_t data_len)
{
    size_t hl = strlen(header);
    unsigned char *buf = calloc(8 + hl + data_len + 1, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    write_bytes(path, buf, 8 + hl + data_len);
    free(buf);
}

static void expect_error(const char *name, const char *header, size_t data_len, int status, const char *needle)
{
    char path[600];
    path_of(path, sizeof path, name);
    write_raw(path, header, data_len);
    st_file *f = NULL;
    int rc = st_open(path, &f);
    CHECK(rc == status && f == NULL, "%s: expected status %d, got %d (%s)", name, status, rc, finch_last_error());
    CHECK(strstr(finch_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", name, finch_last_error(), needle);
    CHECK(strstr(finch_last_error(), name) != NULL, "%s: message '%s' does not name the file", name, finch_last_error());
    st_close(f);
}

static void test_round_trip(void)
{
    float a[6] = {1, -2, 3.5f, 4, 5, 6};
    uint16_t b[3] = {0x3f80, 0xc000, 0x4040}; /* bf16 1, -2, 3 */
    int32_t c[2] = {7, -100};
    st_entry e[3] = {
        {.name = "a.weight", .dtype = ST_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "b", .dtype = ST_BF16, .ndim = 1, .shape = {3}, .data = b},
        {.name = "c", .dtype = ST_I32, .ndim = 1, .shape = {2}, .data = c},
    };
    const char *meta[] = {"format", "pt", NULL};
    char path[600];
    path_of(path, sizeof path, "rt.safetensors");
    CHECK(st_write(path, e, 3, meta) == FINCH_OK, "write: %s", finch_last_error());
    st_file *f = NULL;
    CHECK(st_open(path, &f) == FINCH_OK, "open: %s", finch_last_error());
    if (!f) return;
    CHECK(st_count(f) == 3, "count %d", st_count(f));
    CHECK(st_metadata(f, "format") && !strcmp(st_metadata(f, "format"), "pt"), "metadata");
    const st_tensor *t = st_find(f, "a.weight");
    CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->numel == 6, "a shape");
    float out[6];
    CHECK(t && st_to_f32(t, out) == FINCH_OK && !memcmp(out, a, sizeof a), "a data");
    t = st_find(f, "b");
    float bf[3];
    CHECK(t && st_to_f32(t, bf) == FINCH_OK && bf[0] == 1 && bf[1] == -2 && bf[2] == 3, "bf16 data");
    t = st_find(f, "c");
    int32_t ci[2];
    CHECK(t && st_to_i32(t, ci) == FINCH_OK && ci[0] == 7 && ci[1] == -100, "i32 data");
    CHECK(t && st_to_f32(t, bf) == FINCH_ERR_UNSUPPORTED, "i32 as float must fail");
    CHECK(st_find(f, "missing") == NULL, "missing tensor");
    st_close(f);

    /* no temporary file is left behind */
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    struct stat sb;
    CHECK(stat(tmp, &sb) != 0, "temporary file left behind");
}

static void test_sharded(void)
{
    char sub[600], p1[700], p2[700], idx[700];
    path_of(sub, sizeof sub, "sharded");
    mkdir(sub, 0755);
    float x[2] = {1, 2}, y[3] = {3, 4, 5};
    st_entry e1 = {.name = "x", .dtype = ST_F32, .ndim = 1, .shape = {2}, .data = x};
    st_entry e2 = {.name = "y", .dtype = ST_F32, .ndim = 1, .shape = {3}, .data = y};
    snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", sub);
    snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", sub);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", sub);
    st_write(p1, &e1, 1, NULL);
    st_write(p2, &e2, 1, NULL);
    const char *good = "{\"metadata\":{},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\",\"y\":\"model-00002-of-00002.safetensors\"}}";
    write_bytes(idx, good, strlen(good));
    st_set *s = NULL;
    CHECK(st_set_open_dir(sub, &s) == FINCH_OK, "sharded open: %s", finch_last_error());
    if (s) {
        CHECK(st_set_count(s) == 2, "sharded count");
        const st_tensor *t = st_set_find(s, "y");
        CHECK(t && t->numel == 3, "sharded find");
        CHECK(st_set_file_of(s, "y") && strstr(st_set_file_of(s, "y"), "00002"), "file_of");
        st_set_close(s);
    }
    const char *wrong = "{\"weight_map\":{\"x\":\"model-00002-of-00002.safetensors\",\"y\":\"model-00002-of-00002.safetensors\"}}";
    write_bytes(idx, wrong, strlen(wrong));
    s = NULL;
    CHECK(st_set_open_dir(sub, &s) == FINCH_ERR_FORMAT && !s, "index naming the wrong shard must fail");
    CHECK(strstr(finch_last_error(), "'x'"), "message names the tensor: %s", finch_last_error());
    const char *missing = "{\"weight_map\":{\"x\":\"model-00003-of-00002.safetensors\"}}";
    write_bytes(idx, missing, strlen(missing));
    CHECK(st_set_open_dir(sub, &s) == FINCH_ERR_IO && !s, "missing shard must fail: %s", finch_last_error());
    const char *escape = "{\"weight_map\":{\"x\":\"../rt.safetensors\"}}";
    write_bytes(idx, escape, strlen(escape));
    CHECK(st_set_open_dir(sub, &s) == FINCH_ERR_FORMAT && !s, "shard path outside the folder must fail");
    CHECK(st_set_open_dir("/nonexistent/finch", &s) == FINCH_ERR_IO && !s, "missing directory");
    char empty[600];
    path_of(empty, sizeof empty, "emptydir");
    mkdir(empty, 0755);
    CHECK(st_set_open_dir(empty, &s) == FINCH_ERR_IO && strstr(finch_last_error(), "model.safetensors"), "no weights: %s",
          finch_last_error());
}

static void test_corrupt(void)
{
    st_file *f = NULL;
    CHECK(st_open("/nonexistent/x.safetensors", &f) == FINCH_ERR_IO && !f, "missing file");
    char path[600];
    path_of(path, sizeof path, "short.safetensors");
    write_bytes(path, "abc", 3);
    CHECK(st_open(path, &f) == FINCH_ERR_FORMAT && !f, "3-byte file");
    path_of(path, sizeof path, "hugelen.safetensors");
    write_bytes(path, "\xff\xff\xff\xff\x00\x00\x00\x00{}", 10);
    CHECK(st_open(path, &f) == FINCH_ERR_FORMAT && strstr(finch_last_error(), "header length"), "huge header length: %s",
          finch_last_error());

    expect_error("notjson.safetensors", "{\"a\": [", 0, FINCH_ERR_FORMAT, "JSON");
    expect_error("array.safetensors", "[1,2]", 0, FINCH_ERR_FORMAT, "JSON object");
    expect_error("range.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, FINCH_ERR_FORMAT,
                 "past the end");
    expect_error("shape.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16, FINCH_ERR_FORMAT,
                 "'w'");
    expect_error("dtype.safetensors", "{\"w\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, FINCH_ERR_FORMAT,
                 "unknown dtype");
    expect_error("overlap.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 12, FINCH_ERR_FORMAT, "overlap");
    expect_error("negative.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, FINCH_ERR_FORMAT,
                 "shape[0]");
    expect_error("reversed.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4, FINCH_ERR_FORMAT,
                 "data_offsets");
    expect_error("nodtype.safetensors", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, FINCH_ERR_FORMAT, "dtype");
    expect_error("dup.safetensors",
                 "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                 2, FINCH_ERR_FORMAT, "twice");
    expect_error("meta.safetensors", "{\"__metadata__\":{\"k\":1}}", 0, FINCH_ERR_FORMAT, "metadata");

    /* a valid file cut short at every length never crashes and always fails cleanly */
    float a[16];
    testing_fill_random(a, 16, 3);
    st_entry e = {.name = "t", .dtype = ST_F32, .ndim = 2, .shape = {4, 4}, .data = a};
    char full[600], cut[600];
    path_of(full, sizeof full, "full.safetensors");
    path_of(cut, sizeof cut, "cut.safetensors");
    st_write(full, &e, 1, NULL);
    FILE *fp = fopen(full, "rb");
    unsigned char buf[4096];
    size_t n = fp ? fread(buf, 1, sizeof buf, fp) : 0;
    if (fp) fclose(fp);
    int clean = 1;
    for (size_t len = 0; len < n; len++) {
        write_bytes(cut, buf, len);
        int rc = st_open(cut, &f);
        if (rc == FINCH_OK || f) { clean = 0; st_close(f); f = NULL; }
    }
    CHECK(n > 64 && clean, "every truncation of a %zu-byte file must be rejected", n);
    /* flipped bytes in the header: never a crash */
    for (size_t i = 8; i < 40 && i < n; i++) {
        unsigned char save = buf[i];
        buf[i] ^= 0x5a;
        write_bytes(cut, buf, n);
        if (st_open(cut, &f) == FINCH_OK) st_close(f);
        f = NULL;
        buf[i] = save;
    }
}

int main(void)
{
    snprintf(dir, sizeof dir, "%s/safetensors", testing_tmp_dir());
    mkdir(dir, 0755);
    test_round_trip();
    test_sharded();
    test_corrupt();
    return testing_finish();
}
