/* Generation as text, with a golden model (qwen2, vocabulary 320) given a small byte-level BPE
 * tokenizer and a ChatML template written by this test: streamed pieces add up to the final text; stop
 * strings end generation (also across token boundaries) and are cut from the text; end-of-sequence ids
 * come from generation_config.json, the tokenizer and the options; the callback cancels; and the CLI:
 * `finch generate` (a prompt, JSONL batches) and `finch chat` (turns, /reset, /quit) agree with the library. */
#include "finch/finch.h"
#include "finch/generate.h"
#include "tests/testing.h"
#include "tests/tiny_tokenizer.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char model_dir[1200];

static int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

static const char *specials[3] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"};

static int write_tokenizer(const char *dir) { return write_tiny_tokenizer(dir, specials, 3); }

static int make_model_dir(void)
{
    snprintf(model_dir, sizeof model_dir, "%s/generate_text_model", testing_tmp_dir());
    mkdir(model_dir, 0755);
    const char *files[] = {"config.json", "generation_config.json", "model.safetensors"};
    for (int i = 0; i < 3; i++) {
        char src[1300], dst[1300];
        snprintf(src, sizeof src, "%s/golden/qwen2/model/%s", testing_shared_dir(), files[i]);
        snprintf(dst, sizeof dst, "%s/%s", model_dir, files[i]);
        unlink(dst);
        if (symlink(src, dst)) return 1;
    }
    return write_tokenizer(model_dir);
}

typedef struct stream_log {
    char text[4][8192];
    size_t len[4];
    int calls[4];
    int cancel_after;     /* > 0: cancel on that call */
    int total_calls;
} stream_log;

static int on_token(void *user, int seq, int32_t token, const char *text, size_t len)
{
    stream_log *l = user;
    (void)token;
    l->calls[seq]++;
    l->total_calls++;
    if (text && l->len[seq] + len < sizeof l->text[seq]) {
        memcpy(l->text[seq] + l->len[seq], text, len);
        l->len[seq] += len;
    }
    return l->cancel_after > 0 && l->total_calls == l->cancel_after;
}

static void library(finch_model *m, finch_tokenizer *tok)
{
    finch_tokens p = {0};
    const char *prompt_text = "the rain in spain";
    ok(finch_tokenizer_encode(tok, prompt_text, strlen(prompt_text), 0, &p), "encode");
    const int32_t *prompts[2] = {p.ids, p.ids + 4};
    int64_t lens[2] = {(int64_t)p.len, (int64_t)p.len - 4};

    /* A seeded run, streamed: pieces add up to the text, one call per token. */
    finch_generate_options o = finch_generate_options_default();
    o.sampling.seed = 11; /* the tiny random model's greedy text repeats one letter: sample, seeded */
    o.max_new_tokens = 40;
    o.use_model_eos = 0;
    o.tokenizer = tok;
    o.skip_special = 0;
    o.on_token = on_token;
    stream_log log;
    memset(&log, 0, sizeof log);
    o.user = &log;
    finch_generation g[2];
    if (!ok(finch_generate(m, 2, prompts, lens, &o, g), "generate")) return;
    for (int i = 0; i < 2; i++) {
        char *dec = NULL;
        size_t dl = 0;
        ok(finch_tokenizer_decode(tok, g[i].tokens.ids, g[i].tokens.len, 0, &dec, &dl), "decode");
        CHECK(g[i].text && g[i].text_len == dl && !memcmp(g[i].text, dec, dl), "sequence %d: text is not the decoded tokens", i);
        CHECK(log.len[i] == g[i].text_len && !memcmp(log.text[i], g[i].text, log.len[i]), "sequence %d: streamed pieces differ from the text", i);
        CHECK(log.calls[i] == 40 && g[i].tokens.len == 40, "sequence %d: %d callbacks for %zu tokens", i, log.calls[i], g[i].tokens.len);
        finch_data_free(dec);
    }
    printf("  text 0: %.60s...\n", g[0].text);

    /* A stop string spanning a token boundary: 4 bytes of the text starting at the last byte of token
     * k - 1, for the first k where both bytes at the boundary are ASCII. */
    char stop[8] = "";
    size_t cut = 0;
    for (size_t k = 3; k + 3 < g[0].tokens.len && !stop[0]; k++) {
        char *pre = NULL;
        size_t pl = 0;
        ok(finch_tokenizer_decode(tok, g[0].tokens.ids, k, 0, &pre, &pl), "decode");
        if (pre && pl >= 1 && pl + 3 <= g[0].text_len && !memcmp(pre, g[0].text, pl) && (unsigned char)g[0].text[pl - 1] < 0x80 &&
            (unsigned char)g[0].text[pl] < 0x80 && g[0].text[pl - 1] && g[0].text[pl]) {
            memcpy(stop, g[0].text + pl - 1, 4);
            stop[4] = 0;
            cut = (size_t)(strstr(g[0].text, stop) - g[0].text);
        }
        finch_data_free(pre);
    }
    CHECK(stop[0], "could not build a stop string from the text");
    if (stop[0]) {
        const char *stops[2] = {"\x01never", stop};
        finch_generate_options so = o;
        so.stop_strings = stops;
        so.n_stop_strings = 2;
        stream_log sl2;
        memset(&sl2, 0, sizeof sl2);
        so.user = &sl2;
        finch_generation s1;
        if (ok(finch_generate(m, 1, prompts, lens, &so, &s1), "generate with a stop string")) {
            CHECK(s1.finish == FINCH_FINISH_STOP, "finish %d, not stop", s1.finish);
            CHECK(s1.text_len == cut && !memcmp(s1.text, g[0].text, cut), "stop text: '%s' (expected the first %zu bytes)", s1.text, cut);
            /* It stopped at the first token whose text completes the stop string. */
            char *with = NULL, *without = NULL;
            size_t wl = 0, wol = 0;
            ok(finch_tokenizer_decode(tok, s1.tokens.ids, s1.tokens.len, 0, &with, &wl), "decode");
            ok(finch_tokenizer_decode(tok, s1.tokens.ids, s1.tokens.len - 1, 0, &without, &wol), "decode");
            CHECK(s1.tokens.len >= 1 && s1.tokens.len <= g[0].tokens.len && !memcmp(s1.tokens.ids, g[0].tokens.ids, s1.tokens.len * sizeof(int32_t)) &&
                      with && strstr(with, stop) && without && !strstr(without, stop),
                  "stopped after %zu tokens, not at the first to complete '%s'", s1.tokens.len, stop);
            finch_data_free(with);
            finch_data_free(without);
            CHECK(sl2.len[0] == cut && !memcmp(sl2.text[0], g[0].text, cut), "the stream showed '%.*s', not the first %zu bytes of '%s' (stop '%s')",
                  (int)sl2.len[0], sl2.text[0], cut, g[0].text, stop);
            finch_generation_free(&s1);
        }
    }

    /* End-of-sequence: an id from the options ends the sequence, is kept in tokens, left out of the text. */
    finch_generate_options eo = o;
    int32_t eos = g[0].tokens.ids[9];
    int64_t first_eos = 0;
    while (g[0].tokens.ids[first_eos] != eos) first_eos++;
    eo.eos_ids = &eos;
    eo.n_eos_ids = 1;
    eo.on_token = NULL;
    finch_generation e1;
    if (ok(finch_generate(m, 1, prompts, lens, &eo, &e1), "generate with an eos id")) {
        CHECK(e1.finish == FINCH_FINISH_EOS && (int64_t)e1.tokens.len == first_eos + 1 && e1.tokens.ids[first_eos] == eos,
              "eos: finish %d after %zu tokens (expected %lld)", e1.finish, e1.tokens.len, (long long)first_eos + 1);
        char *dec = NULL;
        size_t dl = 0;
        ok(finch_tokenizer_decode(tok, e1.tokens.ids, (size_t)first_eos, 0, &dec, &dl), "decode");
        CHECK(dec && e1.text_len == dl && !memcmp(e1.text, dec, dl), "eos text includes the eos token");
        finch_data_free(dec);
        finch_generation_free(&e1);
    }
    /* The model's own ids: generation_config.json's eos_token_id, a list or an integer. */
    char gpath[1300];
    snprintf(gpath, sizeof gpath, "%s/generation_config.json", model_dir);
    for (int form = 0; form < 2; form++) {
        int32_t want = g[0].tokens.ids[form ? 11 : 6];
        int64_t at = 0;
        while (g[0].tokens.ids[at] != want) at++;
        unlink(gpath);
        FILE *f = fopen(gpath, "w");
        if (form) fprintf(f, "{\"eos_token_id\": %d}\n", want);
        else fprintf(f, "{\"bos_token_id\": 1, \"eos_token_id\": [318, %d]}\n", want);
        fclose(f);
        finch_generate_options mo = o;
        mo.use_model_eos = 1;
        mo.on_token = NULL;
        finch_generation e2;
        if (ok(finch_generate(m, 1, prompts, lens, &mo, &e2), "generate with the model's eos")) {
            CHECK(e2.finish == FINCH_FINISH_EOS && (int64_t)e2.tokens.len == at + 1, "generation_config eos (%s): finish %d after %zu tokens, expected %lld",
                  form ? "int" : "list", e2.finish, e2.tokens.len, (long long)at + 1);
            finch_generation_free(&e2);
        }
        mo.use_model_eos = 0;
        if (ok(finch_generate(m, 1, prompts, lens, &mo, &e2), "generate ignoring the model's eos")) {
            CHECK(e2.finish == FINCH_FINISH_LENGTH, "use_model_eos = 0 still stops on the model's eos");
            finch_generation_free(&e2);
        }
    }
    unlink(gpath);
    FILE *gf = fopen(gpath, "w");
    fputs("{\"eos_token_id\": \"two\"}\n", gf);
    fclose(gf);
    finch_generate_options mo = o;
    mo.use_model_eos = 1;
    finch_generation e3;
    CHECK(finch_generate(m, 1, prompts, lens, &mo, &e3) == FINCH_ERR_FORMAT && strstr(finch_last_error(), "eos_token_id"),
          "a malformed eos_token_id: %s", finch_last_error());
    unlink(gpath);
    char src[1300];
    snprintf(src, sizeof src, "%s/golden/qwen2/model/generation_config.json", testing_shared_dir());
    CHECK(symlink(src, gpath) == 0, "restoring %s", gpath);

    /* Cancellation: the callback's non-zero return ends every sequence. */
    finch_generate_options co = o;
    stream_log cl;
    memset(&cl, 0, sizeof cl);
    cl.cancel_after = 7;
    co.user = &cl;
    finch_generation c[2];
    int rc = finch_generate(m, 2, prompts, lens, &co, c);
    CHECK(rc == FINCH_ERR_CANCELLED, "cancel: %s", finch_status_name(rc));
    if (rc == FINCH_ERR_CANCELLED) {
        CHECK(cl.total_calls == 7 && c[0].tokens.len + c[1].tokens.len == 7, "cancel: %d calls, %zu + %zu tokens", cl.total_calls,
              c[0].tokens.len, c[1].tokens.len);
        CHECK(c[0].finish == FINCH_FINISH_CANCELLED && c[1].finish == FINCH_FINISH_CANCELLED, "cancel: finish %d %d", c[0].finish, c[1].finish);
        CHECK(c[0].text && !memcmp(c[0].text, cl.text[0], c[0].text_len) && c[0].text_len == cl.len[0], "cancel: text is not what was shown");
        finch_generation_free(&c[0]);
        finch_generation_free(&c[1]);
    }
    finch_generate_options bad = o;
    bad.tokenizer = NULL;
    const char *stops[1] = {"x"};
    bad.stop_strings = stops;
    bad.n_stop_strings = 1;
    CHECK(finch_generate(m, 1, prompts, lens, &bad, c) == FINCH_ERR_INVALID_ARGUMENT, "stop strings without a tokenizer accepted");
    for (int i = 0; i < 2; i++) finch_generation_free(&g[i]);
    finch_tokens_free(&p);
}

/* Runs a shell command; its exit status, stdout in out. */
static int run(const char *cmd, char *out, size_t size)
{
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, size - 1, p);
    out[n] = 0;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void cli(finch_model *m, finch_tokenizer *tok)
{
    const char *bin = getenv("FINCH_BIN_DIR");
    if (!bin) {
        CHECK(0, "FINCH_BIN_DIR is not set (run through ctest)");
        return;
    }
    static char out[65536];
    char cmd[8192];
    finch_generate_options o = finch_generate_options_default();
    o.sampling.greedy = 1;
    o.max_new_tokens = 12;
    o.tokenizer = tok;

    /* --prompt: the streamed text equals the library's. */
    finch_tokens p = {0};
    ok(finch_tokenizer_encode(tok, "hi there", 8, FINCH_ENCODE_ADD_SPECIAL, &p), "encode");
    const int32_t *pp = p.ids;
    int64_t pl = (int64_t)p.len;
    finch_generation g;
    if (ok(finch_generate(m, 1, &pp, &pl, &o, &g), "generate")) {
        snprintf(cmd, sizeof cmd, "'%s/finch' generate --backend cpu --model '%s' --prompt 'hi there' --greedy --max-new-tokens 12 2>/dev/null",
                 bin, model_dir);
        int rc = run(cmd, out, sizeof out);
        CHECK(rc == 0 && strlen(out) == g.text_len + 1 && !memcmp(out, g.text, g.text_len) && out[g.text_len] == '\n',
              "finch generate --prompt (exit %d): '%s' vs '%s'", rc, out, g.text);
        finch_generation_free(&g);
    }
    finch_tokens_free(&p);

    /* --jsonl: chat-rendered batch of three (different lengths), JSON lines in order. */
    char jpath[1300], opath[1300];
    snprintf(jpath, sizeof jpath, "%s/generate_in.jsonl", testing_tmp_dir());
    snprintf(opath, sizeof opath, "%s/generate_out.jsonl", testing_tmp_dir());
    FILE *f = fopen(jpath, "w");
    const char *users[3] = {"one", "a longer question here", "three"};
    fprintf(f, "{\"id\": \"a\", \"prompt\": \"%s\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}]}\n{\"prompt\": \"%s\", \"id\": 7}\n",
            users[0], users[1], users[2]);
    fclose(f);
    snprintf(cmd, sizeof cmd, "'%s/finch' generate --backend cpu --model '%s' --jsonl '%s' --chat --batch 2 --greedy --max-new-tokens 10 --out '%s' 2>&1",
             bin, model_dir, jpath, opath);
    int rc = run(cmd, out, sizeof out);
    CHECK(rc == 0, "finch generate --jsonl exited %d: %s", rc, out);
    f = fopen(opath, "r");
    char line[8192];
    for (int i = 0; i < 3; i++) {
        char msgs[256], *text = NULL;
        snprintf(msgs, sizeof msgs, "[{\"role\":\"user\",\"content\":\"%s\"}]", users[i]);
        finch_chat_template *t = NULL;
        finch_chat_options co = finch_chat_options_for(tok);
        co.add_generation_prompt = 1;
        finch_tokens ids = {0};
        ok(finch_chat_template_from_tokenizer(tok, &t), "template");
        ok(finch_chat_template_render(t, msgs, &co, &text), "render");
        ok(finch_tokenizer_encode(tok, text, strlen(text), 0, &ids), "encode");
        o.max_new_tokens = 10;
        const int32_t *ip = ids.ids;
        int64_t il = (int64_t)ids.len;
        if (ok(finch_generate(m, 1, &ip, &il, &o, &g), "generate")) {
            char want[512];
            snprintf(want, sizeof want, "\"index\":%d,\"text\":", i);
            CHECK(f && fgets(line, sizeof line, f) && strstr(line, want) && strstr(line, "\"finish\":"), "jsonl line %d: %s", i, line);
            CHECK(i != 0 || strstr(line, "\"id\":\"a\""), "jsonl line 0 lost its id: %s", line);
            CHECK(i != 2 || strstr(line, "\"id\":7"), "jsonl line 2 lost its id: %s", line);
            snprintf(want, sizeof want, "\"new_tokens\":%zu", g.tokens.len);
            CHECK(strstr(line, want), "jsonl line %d: %s (library: %zu tokens)", i, line, g.tokens.len);
            finch_generation_free(&g);
        }
        finch_data_free(text);
        finch_tokens_free(&ids);
        finch_chat_template_free(t);
    }
    if (f) fclose(f);

    /* chat: two turns, /reset, the first turn again, /quit: the replies the library gives for the
     * conversation rendered whole (the CLI reuses its cache between turns). */
    const char *turns[2] = {"hello", "how are you"};
    char *replies[2] = {NULL, NULL};
    cJSON *msgs = cJSON_CreateArray();
    cJSON *sys = cJSON_CreateObject();
    cJSON_AddStringToObject(sys, "role", "system");
    cJSON_AddStringToObject(sys, "content", "be brief");
    cJSON_AddItemToArray(msgs, sys);
    finch_chat_template *tpl = NULL;
    ok(finch_chat_template_from_tokenizer(tok, &tpl), "template");
    o.max_new_tokens = 6;
    o.use_model_eos = 0;
    for (int t = 0; t < 2 && tpl; t++) {
        cJSON *u = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "role", "user");
        cJSON_AddStringToObject(u, "content", turns[t]);
        cJSON_AddItemToArray(msgs, u);
        char *json = cJSON_PrintUnformatted(msgs), *text = NULL;
        finch_chat_options co = finch_chat_options_for(tok);
        co.add_generation_prompt = 1;
        finch_tokens ids = {0};
        ok(finch_chat_template_render(tpl, json, &co, &text), "render");
        ok(finch_tokenizer_encode(tok, text, strlen(text), 0, &ids), "encode");
        const int32_t *ip = ids.ids;
        int64_t il = (int64_t)ids.len;
        if (ok(finch_generate(m, 1, &ip, &il, &o, &g), "generate")) {
            replies[t] = strdup(g.text);
            cJSON *a = cJSON_CreateObject();
            cJSON_AddStringToObject(a, "role", "assistant");
            cJSON_AddStringToObject(a, "content", g.text);
            cJSON_AddItemToArray(msgs, a);
            finch_generation_free(&g);
        }
        free(json);
        finch_data_free(text);
        finch_tokens_free(&ids);
    }
    cJSON_Delete(msgs);
    finch_chat_template_free(tpl);
    snprintf(cmd, sizeof cmd, "printf 'hello\\nhow are you\\n/reset\\nhello\\n/quit\\nignored\\n' | '%s/finch' chat --backend cpu --model '%s' --greedy --max-new-tokens 6 --ignore-eos --system 'be brief' 2>/dev/null",
             bin, model_dir);
    rc = run(cmd, out, sizeof out);
    if (replies[0] && replies[1]) {
        char want[4096];
        snprintf(want, sizeof want, "%s\n%s\n%s\n", replies[0], replies[1], replies[0]);
        CHECK(rc == 0 && !strcmp(out, want), "finch chat (exit %d) wrote\n'%s'\nexpected\n'%s'", rc, out, want);
    }
    free(replies[0]);
    free(replies[1]);
    snprintf(cmd, sizeof cmd, "'%s/finch' chat --model '%s' --temperature -1 2>&1", bin, model_dir);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "--temperature"), "a bad option: exit %d: %s", rc, out);
    snprintf(cmd, sizeof cmd, "'%s/finch' generate --backend cpu --model '%s' --prompt '' --greedy 2>&1", bin, model_dir);
    rc = run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "empty"), "an empty prompt: exit %d: %s", rc, out);
}

int main(void)
{
    if (make_model_dir()) {
        CHECK(0, "cannot build the test model folder %s", model_dir);
        return testing_finish();
    }
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_tokenizer *tok = NULL;
    if (ok(finch_runtime_open("cpu", &rt), "runtime") && ok(finch_model_load(rt, model_dir, NULL, &m), "model") &&
        ok(finch_tokenizer_load(model_dir, &tok), "tokenizer")) {
        library(m, tok);
        cli(m, tok);
    }
    finch_tokenizer_free(tok);
    finch_model_free(m);
    finch_runtime_close(rt);
    return testing_finish();
}
