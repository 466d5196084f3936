/* finch tokenize: shows how text or conversations become token ids and which tokens are trained.
 *
 *   finch tokenize --model DIR [--template NAME] [--no-special] [--generation-prompt] [--json]
 *                  [--last-turn-only] [--all-tokens] (--text S | --chat FILE.jsonl | TEXT...)
 *
 * DIR holds tokenizer.json (and tokenizer_config.json); --tokenizer is a synonym of --model. --chat reads
 * a JSONL dataset (messages / ShareGPT / Alpaca / text) or a .json file holding one messages array.
 * Without --json it prints each token as id:text, trained tokens in green; with --json one object per
 * input: {"text": rendered text, "ids": [...], "labels": [...]}. */
#include "finch/data.h"
#include "finch/finch.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct tk_opts {
    const char *model, *template_name, *chat, *text;
    int no_special, generation_prompt, json, last_turn_only, all_tokens, color;
} tk_opts;

static void usage(void)
{
    fprintf(stderr, "usage: finch tokenize --model DIR [--template NAME] [--no-special] [--generation-prompt] [--json]\n"
                    "                      [--last-turn-only] [--all-tokens] (--text S | --chat FILE.jsonl | TEXT...)\n");
}

static void print_json_string(const char *s, size_t n)
{
    cJSON *j = cJSON_CreateString("");
    char *tmp = malloc(n + 1);
    if (!j || !tmp) { free(tmp); cJSON_Delete(j); return; }
    memcpy(tmp, s, n);
    tmp[n] = 0;
    cJSON_SetValuestring(j, tmp);
    char *out = cJSON_PrintUnformatted(j);
    if (out) fputs(out, stdout);
    free(out);
    free(tmp);
    cJSON_Delete(j);
}

static void print_ids(const int32_t *v, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", v[i]);
    putchar(']');
}

static void show(const finch_tokenizer *tok, const tk_opts *o, const char *text, size_t len, const finch_example *ex)
{
    if (o->json) {
        fputs("{\"text\": ", stdout);
        print_json_string(text, len);
        fputs(", \"ids\": ", stdout);
        print_ids(ex->ids.ids, ex->ids.len);
        fputs(", \"labels\": ", stdout);
        print_ids(ex->labels.ids, ex->labels.len);
        fputs("}\n", stdout);
        return;
    }
    size_t trained = 0;
    for (size_t i = 0; i < ex->ids.len; i++) {
        char *piece = NULL;
        size_t n = 0;
        int32_t id = ex->ids.ids[i];
        int train = ex->labels.ids[i] != FINCH_LABEL_IGNORE;
        trained += train;
        if (finch_tokenizer_decode(tok, &id, 1, 0, &piece, &n) != FINCH_OK) continue;
        if (o->color) fputs(train ? "\x1b[32m" : "\x1b[90m", stdout);
        printf("%d:", id);
        for (size_t k = 0; k < n; k++) {
            char c = piece[k];
            if (c == '\n') fputs("\\n", stdout);
            else if (c == '\t') fputs("\\t", stdout);
            else putchar(c);
        }
        if (o->color) fputs("\x1b[0m", stdout);
        else if (train) putchar('*');
        putchar(' ');
        finch_data_free(piece);
    }
    printf("\n(%zu tokens, %zu trained%s)\n", ex->ids.len, trained, o->color ? ": green" : ": marked *");
}

static int plain_text(const finch_tokenizer *tok, const tk_opts *o, const char *text)
{
    finch_example ex = {0};
    size_t len = strlen(text);
    int rc = finch_tokenizer_encode(tok, text, len, o->no_special ? 0 : FINCH_ENCODE_ADD_SPECIAL, &ex.ids);
    for (size_t i = 0; rc == FINCH_OK && i < ex.ids.len; i++) {
        finch_tokens *l = &ex.labels;
        if (l->len == l->cap) {
            l->cap = l->cap ? l->cap * 2 : 64;
            l->ids = realloc(l->ids, l->cap * sizeof *l->ids);
            if (!l->ids) { rc = FINCH_ERR_OUT_OF_MEMORY; break; }
        }
        l->ids[l->len++] = ex.ids.ids[i];
    }
    if (rc == FINCH_OK) show(tok, o, text, len, &ex);
    else fprintf(stderr, "finch tokenize: %s\n", finch_last_error());
    finch_example_free(&ex);
    return rc == FINCH_OK ? 0 : 1;
}

static int chat(const finch_tokenizer *tok, const finch_chat_template *t, const tk_opts *o, const char *messages, int64_t line)
{
    finch_chat_options co = finch_chat_options_for(tok);
    finch_label_options lo = finch_label_options_default();
    lo.last_turn_only = o->last_turn_only;
    lo.train_on_responses_only = !o->all_tokens;
    finch_example ex = {0};
    char *text = NULL;
    int rc = finch_example_from_chat(tok, t, messages, &co, &lo, &ex);
    if (rc == FINCH_OK) rc = finch_chat_template_render(t, messages, &co, &text);
    if (rc == FINCH_OK && o->generation_prompt) {
        /* show the prompt a model would be given: the rendering with the generation prompt, untrained */
        finch_example_free(&ex);
        finch_data_free(text);
        text = NULL;
        co.add_generation_prompt = 1;
        rc = finch_chat_template_render(t, messages, &co, &text);
        if (rc == FINCH_OK) rc = finch_tokenizer_encode(tok, text, strlen(text), 0, &ex.ids);
        for (size_t i = 0; rc == FINCH_OK && i < ex.ids.len; i++) {
            finch_tokens *l = &ex.labels;
            if (l->len == l->cap) { l->cap = l->cap ? l->cap * 2 : 64; l->ids = realloc(l->ids, l->cap * sizeof *l->ids); }
            if (!l->ids) { rc = FINCH_ERR_OUT_OF_MEMORY; break; }
            l->ids[l->len++] = FINCH_LABEL_IGNORE;
        }
    }
    if (rc == FINCH_OK) show(tok, o, text, strlen(text), &ex);
    else if (line > 0) fprintf(stderr, "finch tokenize: %s:%lld: %s\n", o->chat, (long long)line, finch_last_error());
    else fprintf(stderr, "finch tokenize: %s\n", finch_last_error());
    finch_data_free(text);
    finch_example_free(&ex);
    return rc == FINCH_OK ? 0 : 1;
}

static int chat_file(const finch_tokenizer *tok, const finch_chat_template *t, const tk_opts *o)
{
    size_t n = strlen(o->chat);
    if (n > 5 && !strcmp(o->chat + n - 5, ".json")) {
        FILE *f = fopen(o->chat, "rb");
        if (!f) { fprintf(stderr, "finch tokenize: %s: cannot open\n", o->chat); return 1; }
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *buf = malloc((size_t)len + 1);
        size_t got = buf ? fread(buf, 1, (size_t)len, f) : 0;
        fclose(f);
        if (!buf) return 1;
        buf[got] = 0;
        cJSON *j = cJSON_Parse(buf);
        free(buf);
        const cJSON *msgs = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "messages") : j;
        char *text = cJSON_IsArray(msgs) ? cJSON_PrintUnformatted(msgs) : NULL;
        cJSON_Delete(j);
        if (!text) { fprintf(stderr, "finch tokenize: %s: expected a messages array\n", o->chat); return 1; }
        int rc = chat(tok, t, o, text, 0);
        free(text);
        return rc;
    }
    finch_dataset *ds;
    if (finch_dataset_open(o->chat, NULL, &ds) != FINCH_OK) { fprintf(stderr, "finch tokenize: %s\n", finch_last_error()); return 1; }
    finch_record rec;
    int has, failures = 0, rc;
    while ((rc = finch_dataset_next(ds, &rec, &has)) == FINCH_OK && has) {
        if (rec.text) {
            tk_opts text_opts = *o;
            failures += plain_text(tok, &text_opts, rec.text);
        } else {
            failures += chat(tok, t, o, rec.messages_json, rec.line);
        }
    }
    if (rc != FINCH_OK) { fprintf(stderr, "finch tokenize: %s\n", finch_last_error()); failures++; }
    finch_dataset_close(ds);
    return failures ? 1 : 0;
}

int finch_cmd_tokenize(int argc, char **argv)
{
    tk_opts o = {0};
    o.color = isatty(1);
    int first_text = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if ((!strcmp(a, "--model") || !strcmp(a, "--tokenizer")) && i + 1 < argc) o.model = argv[++i];
        else if (!strcmp(a, "--template") && i + 1 < argc) o.template_name = argv[++i];
        else if (!strcmp(a, "--chat") && i + 1 < argc) o.chat = argv[++i];
        else if (!strcmp(a, "--text") && i + 1 < argc) o.text = argv[++i];
        else if (!strcmp(a, "--no-special")) o.no_special = 1;
        else if (!strcmp(a, "--generation-prompt")) o.generation_prompt = 1;
        else if (!strcmp(a, "--json")) o.json = 1;
        else if (!strcmp(a, "--last-turn-only")) o.last_turn_only = 1;
        else if (!strcmp(a, "--all-tokens")) o.all_tokens = 1;
        else if (!strcmp(a, "--no-color")) o.color = 0;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(); return 0; }
        else if (a[0] == '-' && a[1] == '-') { fprintf(stderr, "finch tokenize: unknown option %s\n", a); usage(); return 2; }
        else { first_text = i; break; }
    }
    if (!o.model || (!o.chat && !o.text && first_text >= argc)) { usage(); return 2; }
    finch_tokenizer *tok;
    if (finch_tokenizer_load(o.model, &tok) != FINCH_OK) { fprintf(stderr, "finch tokenize: %s\n", finch_last_error()); return 1; }
    int status = 0;
    if (o.text) status |= plain_text(tok, &o, o.text);
    for (int i = first_text; i < argc; i++) status |= plain_text(tok, &o, argv[i]);
    if (o.chat) {
        finch_chat_template *t = NULL;
        int rc = o.template_name ? finch_chat_template_builtin(o.template_name, &t) : finch_chat_template_from_tokenizer(tok, &t);
        if (rc != FINCH_OK) { fprintf(stderr, "finch tokenize: %s\n", finch_last_error()); status = 1; }
        else status |= chat_file(tok, t, &o);
        finch_chat_template_free(t);
    }
    finch_tokenizer_free(tok);
    return status;
}
