/* finch generate: one-shot generation from a prompt (streamed to stdout) or from a JSONL file of
 * prompts, generated in batches, one JSON object per line out.
 *
 *   finch generate --model DIR (--prompt TEXT | --prompt-ids IDS | --jsonl FILE) [--chat] [--batch N] [--out FILE]
 *                  [--print-ids] [options]
 *
 * --prompt-ids takes the prompt as token ids (1,2,3; no tokenizer needed) and --print-ids prints the
 * generated ids (comma-separated, one line) instead of text: for comparing with other frameworks.
 * A JSONL line is {"prompt": "..."} or {"messages": [{"role", "content"}, ...]} (rendered with the chat
 * template); any "id" is copied to the output line, which reads
 * {"id": .., "index": i, "text": "...", "finish": "eos|length|stop|context", "prompt_tokens": n, "new_tokens": n}. */
#include "samples/finch/commands.h"
#include "samples/finch/gen_setup.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: finch generate --model DIR (--prompt TEXT | --prompt-ids IDS | --jsonl FILE) [--chat] [--batch N] [--out FILE]\n"
               "                      [--print-ids] [options]\n"
               "  --prompt TEXT           generate from TEXT (with --chat: TEXT is a user message in the chat template)\n"
               "  --prompt-ids IDS        generate from token ids, comma-separated (1,2,3): no tokenizer needed\n"
               "  --print-ids             print the generated ids (comma-separated, one line) instead of text\n"
               "  --jsonl FILE            one prompt per line: {\"prompt\": ..} or {\"messages\": [..]}; JSON lines out\n"
               "  --batch N               prompts generated together from a JSONL file (8)\n"
               "  --out FILE              where JSON lines go (default stdout)\n%s",
            gen_setup_usage);
}

static int stream_piece(void *user, int seq, int32_t token, const char *text, size_t len)
{
    (void)user;
    (void)seq;
    (void)token;
    if (len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

/* "1,2,3" as ids; 1 (message printed) when it is not a comma-separated list of integers. */
static int parse_ids(const char *list, finch_tokens *out)
{
    const char *p = list;
    for (;;) {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || end == p || v < INT32_MIN || v > INT32_MAX || (*end && *end != ',')) {
            fprintf(stderr, "finch generate: --prompt-ids needs comma-separated integers, not '%s'\n", list);
            return 1;
        }
        if (out->len == out->cap) {
            size_t cap = out->cap ? 2 * out->cap : 64;
            int32_t *ids = realloc(out->ids, cap * sizeof *ids);
            if (!ids) {
                fprintf(stderr, "finch generate: out of memory\n");
                return 1;
            }
            out->ids = ids;
            out->cap = cap;
        }
        out->ids[out->len++] = (int32_t)v;
        if (!*end) return 0;
        p = end + 1;
    }
}

/* One prompt: text (rendered as a chat with chat), or ids already parsed (given, taken over). */
static int one_prompt(gen_setup *g, const char *prompt, finch_tokens *given, int chat, int print_ids)
{
    finch_tokens ids = {0};
    int rc = 0;
    if (given->len) {
        ids = *given;
        memset(given, 0, sizeof *given);
    } else if (chat) {
        cJSON *msgs = cJSON_CreateArray(), *msg = cJSON_CreateObject();
        cJSON_AddStringToObject(msg, "role", "user");
        cJSON_AddStringToObject(msg, "content", prompt);
        cJSON_AddItemToArray(msgs, msg);
        char *json = cJSON_PrintUnformatted(msgs);
        cJSON_Delete(msgs);
        rc = json ? gen_encode_chat(g, json, &ids) : 1;
        free(json);
    } else {
        rc = gen_encode_text(g, prompt, &ids);
    }
    if (rc) {
        finch_tokens_free(&ids);
        return 1;
    }
    g->opts.on_token = print_ids || !g->tok ? NULL : stream_piece;
    const int32_t *p = ids.ids;
    int64_t len = (int64_t)ids.len;
    finch_generation out;
    rc = finch_generate(g->m, 1, &p, &len, &g->opts, &out);
    finch_tokens_free(&ids);
    if (rc) {
        fprintf(stderr, "\n%s: %s\n", g->cmd, finch_last_error());
        return 1;
    }
    if (print_ids || !g->tok)
        for (size_t i = 0; i < out.tokens.len; i++) printf("%s%d", i ? "," : "", out.tokens.ids[i]);
    putchar('\n');
    fprintf(stderr, "[%zu tokens, %s]\n", out.tokens.len, gen_finish_name(out.finish));
    finch_generation_free(&out);
    return 0;
}

typedef struct pending {
    finch_tokens ids;
    cJSON *id;          /* the line's "id", or NULL */
    int64_t index;
} pending;

static int flush_batch(gen_setup *g, pending *b, int n, FILE *out)
{
    if (!n) return 0;
    const int32_t **prompts = malloc((size_t)n * sizeof *prompts);
    int64_t *lens = malloc((size_t)n * sizeof *lens);
    finch_generation *res = calloc((size_t)n, sizeof *res);
    int rc = !prompts || !lens || !res;
    for (int i = 0; !rc && i < n; i++) {
        prompts[i] = b[i].ids.ids;
        lens[i] = (int64_t)b[i].ids.len;
    }
    if (!rc && finch_generate(g->m, n, prompts, lens, &g->opts, res)) {
        fprintf(stderr, "%s: prompts %lld..%lld: %s\n", g->cmd, (long long)b[0].index, (long long)b[n - 1].index, finch_last_error());
        rc = 1;
    }
    for (int i = 0; !rc && i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        if (b[i].id) cJSON_AddItemToObject(o, "id", cJSON_Duplicate(b[i].id, 1));
        cJSON_AddNumberToObject(o, "index", (double)b[i].index);
        cJSON_AddStringToObject(o, "text", res[i].text ? res[i].text : "");
        cJSON_AddStringToObject(o, "finish", gen_finish_name(res[i].finish));
        cJSON_AddNumberToObject(o, "prompt_tokens", (double)lens[i]);
        cJSON_AddNumberToObject(o, "new_tokens", (double)res[i].tokens.len);
        char *line = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!line || fprintf(out, "%s\n", line) < 0) rc = 1;
        free(line);
        finch_generation_free(&res[i]);
    }
    fflush(out);
    for (int i = 0; i < n; i++) {
        finch_tokens_free(&b[i].ids);
        cJSON_Delete(b[i].id);
        b[i].id = NULL;
    }
    free(prompts);
    free(lens);
    free(res);
    return rc;
}

static int jsonl(gen_setup *g, const char *path, int chat, int batch, FILE *out)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s: cannot open %s\n", g->cmd, path);
        return 1;
    }
    pending *b = calloc((size_t)batch, sizeof *b);
    char *line = NULL;
    size_t cap = 0;
    int n = 0, rc = !b;
    int64_t lineno = 0, index = 0;
    while (!rc && getline(&line, &cap, f) >= 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line)) continue;
        cJSON *j = cJSON_Parse(line);
        const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(j, "prompt"), *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
        if (!cJSON_IsObject(j) || !(cJSON_IsString(prompt) || cJSON_IsArray(msgs))) {
            fprintf(stderr, "%s: %s:%lld: expected an object with \"prompt\" (a string) or \"messages\" (an array)\n", g->cmd, path,
                    (long long)lineno);
            cJSON_Delete(j);
            rc = 1;
            break;
        }
        if (cJSON_IsArray(msgs)) {
            char *json = cJSON_PrintUnformatted(msgs);
            rc = json ? gen_encode_chat(g, json, &b[n].ids) : 1;
            free(json);
        } else if (chat) {
            cJSON *arr = cJSON_CreateArray(), *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", "user");
            cJSON_AddStringToObject(m, "content", prompt->valuestring);
            cJSON_AddItemToArray(arr, m);
            char *json = cJSON_PrintUnformatted(arr);
            cJSON_Delete(arr);
            rc = json ? gen_encode_chat(g, json, &b[n].ids) : 1;
            free(json);
        } else {
            rc = gen_encode_text(g, prompt->valuestring, &b[n].ids);
        }
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
        b[n].id = id ? cJSON_Duplicate(id, 1) : NULL;
        b[n].index = index++;
        cJSON_Delete(j);
        if (rc) {
            fprintf(stderr, "%s: %s:%lld: this line's prompt\n", g->cmd, path, (long long)lineno);
            n++;
            break;
        }
        if (++n == batch) {
            rc = flush_batch(g, b, n, out);
            n = 0;
        }
    }
    if (!rc) rc = flush_batch(g, b, n, out);
    else
        for (int i = 0; i < n; i++) {
            finch_tokens_free(&b[i].ids);
            cJSON_Delete(b[i].id);
        }
    free(line);
    free(b);
    fclose(f);
    return rc;
}

int finch_cmd_generate(int argc, char **argv)
{
    gen_setup g;
    gen_setup_init(&g, "finch generate");
    const char *prompt = NULL, *prompt_ids = NULL, *file = NULL, *out_path = NULL;
    int chat = 0, batch = 8, print_ids = 0;
    for (int i = 1; i < argc; i++) {
        int taken = gen_setup_option(&g, argc, argv, &i);
        if (taken < 0) return 2;
        if (taken) continue;
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--chat")) {
            chat = 1;
        } else if (!strcmp(a, "--print-ids")) {
            print_ids = 1;
        } else if (!strcmp(a, "--prompt-ids") && i + 1 < argc) {
            prompt_ids = argv[++i];
        } else if ((!strcmp(a, "--prompt") || !strcmp(a, "--jsonl") || !strcmp(a, "--out") || !strcmp(a, "--batch")) && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(a, "--prompt")) prompt = v;
            else if (!strcmp(a, "--jsonl")) file = v;
            else if (!strcmp(a, "--out")) out_path = v;
            else if ((batch = atoi(v)) < 1 || batch > 4096) {
                fprintf(stderr, "finch generate: --batch must be in [1, 4096]\n");
                return 2;
            }
        } else {
            fprintf(stderr, "finch generate: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!g.model || (prompt != NULL) + (prompt_ids != NULL) + (file != NULL) != 1) {
        fprintf(stderr, "finch generate: --model and one of --prompt, --prompt-ids or --jsonl are required\n");
        usage(stderr);
        return 2;
    }
    if (prompt_ids && chat) {
        fprintf(stderr, "finch generate: --chat renders text; it does not take --prompt-ids\n");
        return 2;
    }
    if (print_ids && file) {
        fprintf(stderr, "finch generate: --print-ids is for --prompt or --prompt-ids\n");
        return 2;
    }
    finch_tokens given = {0};
    if (prompt_ids && parse_ids(prompt_ids, &given)) {
        finch_tokens_free(&given);
        return 2;
    }
    g.tokenizer_optional = prompt_ids != NULL;
    if (gen_setup_open(&g, chat)) {
        finch_tokens_free(&given);
        gen_setup_close(&g);
        return 1;
    }
    int rc;
    if (prompt || prompt_ids) {
        rc = one_prompt(&g, prompt, &given, chat, print_ids);
    } else {
        /* JSON lines go to a temporary file renamed over --out once complete. */
        char tmp[4200];
        FILE *out = stdout;
        if (out_path) {
            snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
            out = fopen(tmp, "w");
            if (!out) {
                fprintf(stderr, "finch generate: cannot write %s\n", tmp);
                gen_setup_close(&g);
                return 1;
            }
        }
        rc = jsonl(&g, file, chat, batch, out);
        if (out_path) {
            if (fclose(out) != 0) rc = 1;
            if (rc) remove(tmp);
            else if (rename(tmp, out_path) != 0) {
                fprintf(stderr, "finch generate: cannot rename %s to %s\n", tmp, out_path);
                rc = 1;
            }
        }
    }
    gen_setup_close(&g);
    return rc;
}
