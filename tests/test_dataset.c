/* Training data: response-only labels on the real Qwen3 and Llama 3 templates (every assistant token and
 * its end-of-turn token trained, nothing else), JSONL datasets in every shape with their error reports,
 * packing and padding. */
#include "finch/data.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <stdlib.h>
#include <string.h>

static finch_tokenizer *load(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/%s", testing_shared_dir(), name);
    finch_tokenizer *tok = NULL;
    int rc = finch_tokenizer_load(path, &tok);
    CHECK(rc == FINCH_OK, "load %s: %s", name, finch_last_error());
    return tok;
}

/* The decoded text of each maximal run of trained labels, joined with "|". */
static char *trained_spans(const finch_tokenizer *tok, const finch_example *ex)
{
    size_t cap = 4096, len = 0;
    char *out = calloc(cap, 1);
    for (size_t i = 0; i < ex->labels.len;) {
        if (ex->labels.ids[i] == FINCH_LABEL_IGNORE) { i++; continue; }
        size_t j = i;
        while (j < ex->labels.len && ex->labels.ids[j] != FINCH_LABEL_IGNORE) {
            CHECK(ex->labels.ids[j] == ex->ids.ids[j], "trained label equals its input id");
            j++;
        }
        char *s = NULL;
        size_t n = 0;
        finch_tokenizer_decode(tok, ex->ids.ids + i, j - i, 0, &s, &n);
        if (len + n + 2 < cap) {
            if (len) out[len++] = '|';
            memcpy(out + len, s, n);
            len += n;
            out[len] = 0;
        }
        finch_data_free(s);
        i = j;
    }
    return out;
}

static const char *CHAT =
    "[{\"role\":\"system\",\"content\":\"You are terse.\"},{\"role\":\"user\",\"content\":\"2+2?\"},"
    "{\"role\":\"assistant\",\"content\":\"4\"},{\"role\":\"user\",\"content\":\"And 3+3?\"},"
    "{\"role\":\"assistant\",\"content\":\"It is 6.\"}]";

static void response_labels(const char *name, const char *want_all, const char *want_last)
{
    finch_tokenizer *tok = load(name);
    if (!tok) return;
    finch_chat_template *t = NULL;
    int rc = finch_chat_template_from_tokenizer(tok, &t);
    CHECK(rc == FINCH_OK, "%s template: %s", name, finch_last_error());
    finch_chat_options co = finch_chat_options_for(tok);
    finch_label_options lo = finch_label_options_default();
    finch_example ex;
    rc = finch_example_from_chat(tok, t, CHAT, &co, &lo, &ex);
    CHECK(rc == FINCH_OK, "%s labels: %s", name, finch_last_error());
    if (rc == FINCH_OK) {
        char *spans = trained_spans(tok, &ex);
        CHECK(!strcmp(spans, want_all), "%s: trained spans \"%s\", want \"%s\"", name, spans, want_all);
        /* the ids are exactly the encoding of the rendered conversation */
        char *text = NULL;
        finch_chat_template_render(t, CHAT, &co, &text);
        finch_tokens ids = {0};
        finch_tokenizer_encode(tok, text, strlen(text), 0, &ids);
        CHECK(ids.len == ex.ids.len && !memcmp(ids.ids, ex.ids.ids, ids.len * sizeof *ids.ids), "%s: example ids = encode(render)", name);
        finch_tokens_free(&ids);
        finch_data_free(text);
        free(spans);
        finch_example_free(&ex);
    }
    lo.last_turn_only = 1;
    rc = finch_example_from_chat(tok, t, CHAT, &co, &lo, &ex);
    if (rc == FINCH_OK) {
        char *spans = trained_spans(tok, &ex);
        CHECK(!strcmp(spans, want_last), "%s last turn: \"%s\", want \"%s\"", name, spans, want_last);
        free(spans);
        finch_example_free(&ex);
    }
    lo = finch_label_options_default();
    rc = finch_example_from_chat(tok, t, "[{\"role\":\"user\",\"content\":\"hi\"}]", &co, &lo, &ex);
    CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "no assistant"), "%s: no assistant turn is an error: %s", name, finch_last_error());
    rc = finch_example_from_chat(tok, t, "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"\"}]", &co, &lo, &ex);
    CHECK(rc == FINCH_OK, "%s: an empty assistant turn still trains its end-of-turn token: %s", name, finch_last_error());
    if (rc == FINCH_OK) finch_example_free(&ex);
    lo.train_on_responses_only = 0;
    rc = finch_example_from_chat(tok, t, CHAT, &co, &lo, &ex);
    CHECK(rc == FINCH_OK && ex.labels.len == ex.ids.len && !memcmp(ex.labels.ids, ex.ids.ids, ex.ids.len * 4), "%s: whole-conversation labels", name);
    if (rc == FINCH_OK) finch_example_free(&ex);
    finch_chat_template_free(t);
    finch_tokenizer_free(tok);
}

static void builtin_labels(void)
{
    /* a tokenizer whose vocabulary has <|im_start|>/<|im_end|> as special tokens works with chatml */
    finch_tokenizer *tok = load("qwen3");
    if (!tok) return;
    finch_chat_template *t = NULL;
    CHECK(finch_chat_template_builtin("chatml", &t) == FINCH_OK, "chatml");
    finch_chat_options co = finch_chat_options_for(tok);
    finch_label_options lo = finch_label_options_default();
    finch_example ex;
    int rc = finch_example_from_chat(tok, t, CHAT, &co, &lo, &ex);
    CHECK(rc == FINCH_OK, "chatml labels: %s", finch_last_error());
    if (rc == FINCH_OK) {
        char *spans = trained_spans(tok, &ex);
        CHECK(!strcmp(spans, "4<|im_end|>|It is 6.<|im_end|>"), "chatml spans: %s", spans);
        free(spans);
        finch_example_free(&ex);
    }
    finch_chat_template_free(t);
    finch_tokenizer_free(tok);
}

static void text_examples(void)
{
    finch_tokenizer *tok = load("llama2");
    if (!tok) return;
    finch_example ex;
    finch_label_options lo = finch_label_options_default();
    int rc = finch_example_from_text(tok, "Hello, world!", 13, &lo, &ex);
    CHECK(rc == FINCH_OK && ex.ids.len == 6 && ex.ids.ids[0] == 1 && ex.ids.ids[5] == 2, "text: <s> Hello , world ! </s>");
    CHECK(rc == FINCH_OK && !memcmp(ex.ids.ids, ex.labels.ids, ex.ids.len * 4), "text: every token trained");
    if (rc == FINCH_OK) finch_example_free(&ex);
    rc = finch_example_from_text(tok, "bad \xff utf8", 10, &lo, &ex);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "UTF-8"), "invalid UTF-8: %s", finch_last_error());
    finch_tokenizer_free(tok);
}

static char *write_tmp(const char *name, const char *content)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", testing_tmp_dir(), name);
    FILE *f = fopen(path, "wb");
    fputs(content, f);
    fclose(f);
    return path;
}

static void datasets(void)
{
    finch_dataset *ds;
    finch_record rec;
    int has;
    char *p = write_tmp("ds_sharegpt.jsonl",
                        "{\"conversations\":[{\"from\":\"human\",\"value\":\"hi\"},{\"from\":\"gpt\",\"value\":\"yo\"}]}\n"
                        "\n"
                        "{\"conversations\":[{\"from\":\"system\",\"value\":\"s\"},{\"from\":\"user\",\"value\":\"q\"},{\"from\":\"model\",\"value\":\"a\"}]}\n");
    CHECK(finch_dataset_open(p, NULL, &ds) == FINCH_OK, "open: %s", finch_last_error());
    CHECK(finch_dataset_next(ds, &rec, &has) == FINCH_OK && has, "sharegpt record 1");
    CHECK(rec.format == FINCH_DATASET_SHAREGPT && rec.line == 1, "sharegpt detected");
    CHECK(!strcmp(rec.messages_json, "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]"),
          "sharegpt normalised: %s", rec.messages_json);
    CHECK(finch_dataset_next(ds, &rec, &has) == FINCH_OK && has && rec.line == 3, "blank line skipped, record on line 3");
    CHECK(strstr(rec.messages_json, "\"role\":\"system\"") && strstr(rec.messages_json, "\"role\":\"assistant\",\"content\":\"a\""), "aliases: %s", rec.messages_json);
    CHECK(finch_dataset_next(ds, &rec, &has) == FINCH_OK && !has, "end of file");
    finch_dataset_close(ds);

    p = write_tmp("ds_alpaca.jsonl", "{\"instruction\":\"Add\",\"input\":\"1 2\",\"output\":\"3\"}\n{\"instruction\":\"Hi\",\"output\":\"Hello\"}\n");
    finch_dataset_options o = finch_dataset_options_default();
    o.alpaca_system = "Be exact.";
    CHECK(finch_dataset_open(p, &o, &ds) == FINCH_OK, "open alpaca");
    CHECK(finch_dataset_next(ds, &rec, &has) == FINCH_OK && has && rec.format == FINCH_DATASET_ALPACA, "alpaca");
    CHECK(has && !strcmp(rec.messages_json, "[{\"role\":\"system\",\"content\":\"Be exact.\"},{\"role\":\"user\",\"content\":\"Add\\n\\n1 2\"},{\"role\":\"assistant\",\"content\":\"3\"}]"),
          "alpaca normalised: %s", rec.messages_json);
    finch_dataset_close(ds);

    p = write_tmp("ds_text.jsonl", "{\"text\":\"once upon a time\"}\n");
    CHECK(finch_dataset_open(p, NULL, &ds) == FINCH_OK, "open text");
    CHECK(finch_dataset_next(ds, &rec, &has) == FINCH_OK && has && rec.format == FINCH_DATASET_TEXT && !strcmp(rec.text, "once upon a time"), "text");
    finch_dataset_close(ds);

    /* bad lines: each reported with file:line and the reason */
    static const struct { const char *content, *reason; } BAD[] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n{\"messages\": [\n", "not valid JSON"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n{\"messages\":[{\"role\":\"wizard\",\"content\":\"a\"}]}\n", "unknown role 'wizard'"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n{\"messages\":[{\"role\":\"user\"}]}\n", "no string \"content\""},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}\n", "invalid UTF-8"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n{\"messages\":[]}\n", "is empty"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n[1,2]\n", "not a JSON object"},
        {"{\"instruction\":\"a\",\"output\":\"b\"}\n{\"instruction\":\"a\"}\n", "\"output\" is missing"},
    };
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        p = write_tmp("ds_bad.jsonl", BAD[i].content);
        CHECK(finch_dataset_open(p, NULL, &ds) == FINCH_OK, "open bad");
        CHECK(finch_dataset_next(ds, &rec, &has) == FINCH_OK && has, "line 1 is good");
        int rc = finch_dataset_next(ds, &rec, &has);
        char where[1100];
        snprintf(where, sizeof where, "%s:2: ", p);
        CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), where) && strstr(finch_last_error(), BAD[i].reason),
              "bad case %zu: %s", i, finch_last_error());
        finch_dataset_close(ds);
    }
    /* skip policy: bad lines counted */
    p = write_tmp("ds_skip.jsonl", "{\"text\":\"a\"}\nnot json\n{\"text\":5}\n{\"text\":\"b\"}\n");
    o = finch_dataset_options_default();
    o.bad_lines = FINCH_BAD_LINE_SKIP;
    CHECK(finch_dataset_open(p, &o, &ds) == FINCH_OK, "open skip");
    int n = 0;
    while (finch_dataset_next(ds, &rec, &has) == FINCH_OK && has) n++;
    CHECK(n == 2 && finch_dataset_bad_lines(ds) == 2, "skip: 2 records, 2 bad lines (got %d, %lld)", n, (long long)finch_dataset_bad_lines(ds));
    CHECK(finch_dataset_rewind(ds) == FINCH_OK && finch_dataset_next(ds, &rec, &has) == FINCH_OK && has && rec.line == 1, "rewind");
    finch_dataset_close(ds);
    /* format override: a messages file read as text fails on its first line */
    p = write_tmp("ds_override.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n");
    o = finch_dataset_options_default();
    o.format = FINCH_DATASET_TEXT;
    CHECK(finch_dataset_open(p, &o, &ds) == FINCH_OK, "open override");
    CHECK(finch_dataset_next(ds, &rec, &has) == FINCH_ERR_FORMAT && strstr(finch_last_error(), ":1: \"text\" is missing"), "override: %s", finch_last_error());
    finch_dataset_close(ds);
    CHECK(finch_dataset_open("/nonexistent/x.jsonl", NULL, &ds) == FINCH_ERR_IO && strstr(finch_last_error(), "/nonexistent/x.jsonl"), "missing file");
}

static void make_example(finch_example *e, int n, int first_id, int train_from)
{
    memset(e, 0, sizeof *e);
    for (int i = 0; i < n; i++) {
        e->ids.ids = realloc(e->ids.ids, (size_t)(i + 1) * 4);
        e->labels.ids = realloc(e->labels.ids, (size_t)(i + 1) * 4);
        e->ids.ids[i] = first_id + i;
        e->labels.ids[i] = i >= train_from ? first_id + i : FINCH_LABEL_IGNORE;
    }
    e->ids.len = e->labels.len = e->ids.cap = e->labels.cap = (size_t)n;
}

static void packing(void)
{
    finch_example ex[4];
    make_example(&ex[0], 5, 100, 2);
    make_example(&ex[1], 4, 200, 0);
    make_example(&ex[2], 12, 300, 1);
    make_example(&ex[3], 3, 400, 1);
    finch_pack_options po = {.max_seq_length = 10, .packing = 1, .pad_id = 0};
    finch_packed_batch b;
    finch_pack_stats st;
    int rc = finch_pack_examples(ex, 4, &po, &b, &st);
    CHECK(rc == FINCH_OK, "pack: %s", finch_last_error());
    /* first fit: row 0 = ex0 (5) + ex1 (4); row 1 = ex2 truncated to 10; row 0 is full for ex3 (3): row 2 */
    CHECK(b.rows == 3 && b.seq_len == 10 && st.truncated == 1 && st.examples == 4, "rows %lld, truncated %lld", (long long)b.rows, (long long)st.truncated);
    CHECK(b.position_ids[5] == 0 && b.position_ids[4] == 4 && b.position_ids[8] == 3, "positions restart per example");
    CHECK(b.labels[0] == FINCH_LABEL_IGNORE && b.labels[5] == FINCH_LABEL_IGNORE && b.labels[6] == 201, "boundary labels masked");
    CHECK(b.labels[2] == 102 && b.labels[1] == FINCH_LABEL_IGNORE, "labels kept");
    CHECK(b.input_ids[9] == 0 && b.attention_mask[9] == 0 && b.seq_ids[9] == -1 && b.labels[9] == FINCH_LABEL_IGNORE, "padding");
    CHECK(b.n_seqs[0] == 2 && b.cu_seqlens[0] == 0 && b.cu_seqlens[1] == 5 && b.cu_seqlens[2] == 9, "cu_seqlens row 0");
    CHECK(b.n_seqs[1] == 1 && b.cu_seqlens[3 + 1] == 10 && b.cu_seqlens[3 + 2] == 10, "cu_seqlens row 1");
    CHECK(b.input_ids[10 + 9] == 309, "truncation keeps the start");
    CHECK(st.trained_tokens == 3 + 3 + 9 + 2, "trained tokens %lld", (long long)st.trained_tokens);
    finch_packed_batch_free(&b);
    po.packing = 0;
    rc = finch_pack_examples(ex, 4, &po, &b, &st);
    CHECK(rc == FINCH_OK && b.rows == 4 && b.seq_len == 10 && b.input_ids[10 + 4] == 0 && b.attention_mask[10 + 3] == 1,
          "padded batch: one example per row");
    finch_packed_batch_free(&b);
    for (int i = 0; i < 4; i++) finch_example_free(&ex[i]);

    size_t a[50], c[50], d[50];
    finch_shuffle_indices(a, 50, 7);
    finch_shuffle_indices(c, 50, 7);
    finch_shuffle_indices(d, 50, 8);
    int seen[50] = {0}, perm = 1;
    for (int i = 0; i < 50; i++) perm &= !seen[a[i]]++;
    CHECK(perm && !memcmp(a, c, sizeof a) && memcmp(a, d, sizeof a), "shuffle: a permutation, same for a seed, different across seeds");
}

int main(void)
{
    response_labels("qwen3", "4<|im_end|>|<think>\n\n</think>\n\nIt is 6.<|im_end|>", "<think>\n\n</think>\n\nIt is 6.<|im_end|>");
    response_labels("llama3", "4<|eot_id|>|It is 6.<|eot_id|>", "It is 6.<|eot_id|>");
    builtin_labels();
    text_examples();
    datasets();
    packing();
    return testing_finish();
}
