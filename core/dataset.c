/* JSONL datasets read one line at a time: each line becomes a record, either plain text or a
 * conversation normalised to [{"role", "content"}] with roles system / user / assistant / tool.
 *
 * Shapes (detected from the first valid line unless the caller fixes one):
 *   {"messages": [{"role": ..., "content": ...}, ...]}
 *   {"conversations": [{"from": "human"|"gpt"|..., "value": ...}, ...]}      (ShareGPT)
 *   {"instruction": ..., "input": ...?, "output": ...}                      (Alpaca)
 *   {"text": ...}
 * A bad line is an error naming file:line and the reason, or (skip policy) is counted and skipped. */
#include "core/error.h"
#include "core/unicode.h"
#include "finch/data.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct finch_dataset {
    char *path;
    FILE *f;
    finch_dataset_options opts;
    finch_dataset_format format;
    char *line;
    size_t line_cap;
    int64_t line_no, bad_lines;
    char *messages_json;  /* the current record's normalised conversation */
    char *text;           /* the current record's text */
};

finch_dataset_options finch_dataset_options_default(void)
{
    finch_dataset_options o = {0};
    o.format = FINCH_DATASET_AUTO;
    o.bad_lines = FINCH_BAD_LINE_FAIL;
    return o;
}

const char *finch_dataset_format_name(finch_dataset_format f)
{
    switch (f) {
    case FINCH_DATASET_AUTO: return "auto";
    case FINCH_DATASET_MESSAGES: return "messages";
    case FINCH_DATASET_SHAREGPT: return "sharegpt";
    case FINCH_DATASET_ALPACA: return "alpaca";
    case FINCH_DATASET_TEXT: return "text";
    }
    return "?";
}

finch_status finch_dataset_open(const char *path, const finch_dataset_options *opts, finch_dataset **out)
{
    if (!path || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_dataset_open: NULL argument");
    *out = NULL;
    finch_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "dataset");
    ds->opts = opts ? *opts : finch_dataset_options_default();
    ds->format = ds->opts.format;
    ds->path = strdup(path);
    ds->f = fopen(path, "rb");
    if (!ds->f || !ds->path) {
        finch_dataset_close(ds);
        return finch_error(FINCH_ERR_IO, "%s: cannot open the dataset", path);
    }
    *out = ds;
    return FINCH_OK;
}

void finch_dataset_close(finch_dataset *ds)
{
    if (!ds) return;
    if (ds->f) fclose(ds->f);
    free(ds->path);
    free(ds->line);
    free(ds->messages_json);
    free(ds->text);
    free(ds);
}

finch_status finch_dataset_rewind(finch_dataset *ds)
{
    if (!ds) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_dataset_rewind: NULL argument");
    if (fseek(ds->f, 0, SEEK_SET)) return finch_error(FINCH_ERR_IO, "%s: cannot rewind", ds->path);
    ds->line_no = ds->bad_lines = 0;
    return FINCH_OK;
}

finch_dataset_format finch_dataset_get_format(const finch_dataset *ds) { return ds ? ds->format : FINCH_DATASET_AUTO; }
int64_t finch_dataset_bad_lines(const finch_dataset *ds) { return ds ? ds->bad_lines : 0; }

/* ---- one line ---- */

typedef struct line_error { char msg[512]; } line_error;

static int bad(line_error *e, const char *fmt, const char *a, const char *b)
{
    snprintf(e->msg, sizeof e->msg, fmt, a ? a : "", b ? b : "");
    return 1;
}

static const char *canonical_role(const char *r)
{
    static const struct { const char *alias, *role; } ROLES[] = {
        {"system", "system"}, {"user", "user"}, {"human", "user"}, {"assistant", "assistant"}, {"gpt", "assistant"},
        {"model", "assistant"}, {"bot", "assistant"}, {"chatgpt", "assistant"}, {"tool", "tool"},
        {"function", "tool"}, {"observation", "tool"}, {"ipython", "tool"}};
    for (size_t i = 0; i < sizeof ROLES / sizeof ROLES[0]; i++)
        if (!strcmp(ROLES[i].alias, r)) return ROLES[i].role;
    return NULL;
}

static finch_dataset_format detect(const cJSON *o)
{
    if (cJSON_GetObjectItemCaseSensitive(o, "messages")) return FINCH_DATASET_MESSAGES;
    if (cJSON_GetObjectItemCaseSensitive(o, "conversations")) return FINCH_DATASET_SHAREGPT;
    if (cJSON_GetObjectItemCaseSensitive(o, "instruction")) return FINCH_DATASET_ALPACA;
    if (cJSON_GetObjectItemCaseSensitive(o, "text")) return FINCH_DATASET_TEXT;
    return FINCH_DATASET_AUTO;
}

static int add_message(cJSON *arr, const char *role, const char *content)
{
    cJSON *m = cJSON_CreateObject();
    if (!m) return 1;
    cJSON_AddStringToObject(m, "role", role);
    cJSON_AddStringToObject(m, "content", content);
    cJSON_AddItemToArray(arr, m);
    return 0;
}

/* Normalises a conversation list (messages or ShareGPT) into out. */
static int conversation(const cJSON *list, const char *list_key, const char *role_key, const char *content_key,
                        cJSON *out, line_error *e)
{
    if (!cJSON_IsArray(list)) return bad(e, "\"%s\" is not an array", list_key, NULL);
    if (!cJSON_GetArraySize(list)) return bad(e, "\"%s\" is empty", list_key, NULL);
    int i = 0, n_assistant = 0;
    for (const cJSON *m = list->child; m; m = m->next, i++) {
        char idx[64];
        snprintf(idx, sizeof idx, "%s[%d]", list_key, i);
        if (!cJSON_IsObject(m)) return bad(e, "%s is not an object", idx, NULL);
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, role_key);
        if (!cJSON_IsString(r)) return bad(e, "%s has no string \"%s\"", idx, role_key);
        const char *role = canonical_role(r->valuestring);
        if (!role) {
            char msg[300];
            snprintf(msg, sizeof msg, "%s has an unknown role '%.200s'", idx, r->valuestring);
            return bad(e, "%s (expected system, user/human, assistant/gpt, tool)", msg, NULL);
        }
        n_assistant += !strcmp(role, "assistant");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, content_key);
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (!cJSON_IsString(c) && !(cJSON_IsArray(calls) && (!c || cJSON_IsNull(c))) && !cJSON_IsArray(c))
            return bad(e, "%s has no string \"%s\"", idx, content_key);
        cJSON *copy;
        if (!strcmp(role_key, "role")) {
            copy = cJSON_Duplicate(m, 1);
            if (copy) cJSON_ReplaceItemInObjectCaseSensitive(copy, "role", cJSON_CreateString(role));
        } else {
            copy = cJSON_CreateObject();
            if (copy) {
                cJSON_AddStringToObject(copy, "role", role);
                cJSON_AddItemToObject(copy, "content", cJSON_Duplicate(c, 1));
            }
        }
        if (!copy) return bad(e, "out of memory", NULL, NULL);
        cJSON_AddItemToArray(out, copy);
    }
    (void)n_assistant;
    return 0;
}

static int alpaca(const cJSON *o, const char *system, cJSON *out, line_error *e)
{
    const cJSON *ins = cJSON_GetObjectItemCaseSensitive(o, "instruction");
    const cJSON *inp = cJSON_GetObjectItemCaseSensitive(o, "input");
    const cJSON *outp = cJSON_GetObjectItemCaseSensitive(o, "output");
    if (!cJSON_IsString(ins)) return bad(e, "\"instruction\" is missing or not a string", NULL, NULL);
    if (!cJSON_IsString(outp)) return bad(e, "\"output\" is missing or not a string", NULL, NULL);
    if (inp && !cJSON_IsNull(inp) && !cJSON_IsString(inp)) return bad(e, "\"input\" is not a string", NULL, NULL);
    size_t n = strlen(ins->valuestring) + (cJSON_IsString(inp) ? strlen(inp->valuestring) : 0) + 3;
    char *user = malloc(n);
    if (!user) return bad(e, "out of memory", NULL, NULL);
    if (cJSON_IsString(inp) && *inp->valuestring) snprintf(user, n, "%s\n\n%s", ins->valuestring, inp->valuestring);
    else snprintf(user, n, "%s", ins->valuestring);
    int fail = (system && add_message(out, "system", system)) || add_message(out, "user", user) ||
               add_message(out, "assistant", outp->valuestring);
    free(user);
    return fail ? bad(e, "out of memory", NULL, NULL) : 0;
}

/* Parses one line into the dataset's current record; 0 on success, else e says why. */
static int parse_line(finch_dataset *ds, const char *line, size_t len, line_error *e)
{
    size_t at;
    if (!utf8_valid(line, len, &at)) {
        char pos[32];
        snprintf(pos, sizeof pos, "%zu", at + 1);
        return bad(e, "invalid UTF-8 at byte %s%s", pos, NULL);
    }
    cJSON *o = cJSON_ParseWithLength(line, len);
    if (!o) {
        const char *where = cJSON_GetErrorPtr();
        char near[48] = "";
        if (where) snprintf(near, sizeof near, "%.40s", where);
        return bad(e, "not valid JSON (near \"%s\")%s", near, NULL);
    }
    int rc = 0;
    if (!cJSON_IsObject(o)) { rc = bad(e, "not a JSON object", NULL, NULL); goto done; }
    finch_dataset_format f = ds->format;
    if (f == FINCH_DATASET_AUTO) {
        f = detect(o);
        if (f == FINCH_DATASET_AUTO) {
            rc = bad(e, "cannot tell the dataset format: expected a \"messages\", \"conversations\", \"instruction\" or \"text\" field%s%s", NULL, NULL);
            goto done;
        }
    }
    free(ds->messages_json);
    free(ds->text);
    ds->messages_json = ds->text = NULL;
    if (f == FINCH_DATASET_TEXT) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text");
        if (!cJSON_IsString(t)) { rc = bad(e, "\"text\" is missing or not a string", NULL, NULL); goto done; }
        if (!*t->valuestring) { rc = bad(e, "\"text\" is empty", NULL, NULL); goto done; }
        ds->text = strdup(t->valuestring);
        if (!ds->text) rc = bad(e, "out of memory", NULL, NULL);
    } else {
        cJSON *msgs = cJSON_CreateArray();
        if (!msgs) { rc = bad(e, "out of memory", NULL, NULL); goto done; }
        if (f == FINCH_DATASET_MESSAGES)
            rc = conversation(cJSON_GetObjectItemCaseSensitive(o, "messages"), "messages", "role", "content", msgs, e);
        else if (f == FINCH_DATASET_SHAREGPT)
            rc = conversation(cJSON_GetObjectItemCaseSensitive(o, "conversations"), "conversations", "from", "value", msgs, e);
        else
            rc = alpaca(o, ds->opts.alpaca_system, msgs, e);
        if (!rc) {
            ds->messages_json = cJSON_PrintUnformatted(msgs);
            if (!ds->messages_json) rc = bad(e, "out of memory", NULL, NULL);
        }
        cJSON_Delete(msgs);
    }
    if (!rc) ds->format = f; /* the first valid line fixes the file's format */
done:
    cJSON_Delete(o);
    return rc;
}

finch_status finch_dataset_next(finch_dataset *ds, finch_record *rec, int *has_record)
{
    if (!ds || !rec || !has_record) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_dataset_next: NULL argument");
    *has_record = 0;
    for (;;) {
        errno = 0;
        ssize_t n = getline(&ds->line, &ds->line_cap, ds->f);
        if (n < 0) {
            if (ferror(ds->f)) return finch_error(FINCH_ERR_IO, "%s:%lld: read error", ds->path, (long long)ds->line_no + 1);
            return FINCH_OK;
        }
        ds->line_no++;
        size_t len = (size_t)n;
        while (len && (ds->line[len - 1] == '\n' || ds->line[len - 1] == '\r')) len--;
        size_t k = 0;
        while (k < len && (ds->line[k] == ' ' || ds->line[k] == '\t')) k++;
        if (k == len) continue; /* blank lines are allowed */
        if (ds->line_no == 1 && len >= 3 && !memcmp(ds->line, "\xEF\xBB\xBF", 3)) { k = 3; } /* UTF-8 BOM */
        line_error e;
        if (parse_line(ds, ds->line + k, len - k, &e)) {
            ds->bad_lines++;
            if (ds->opts.bad_lines == FINCH_BAD_LINE_SKIP) continue;
            return finch_error(FINCH_ERR_FORMAT, "%s:%lld: %s", ds->path, (long long)ds->line_no, e.msg);
        }
        rec->format = ds->format;
        rec->messages_json = ds->messages_json;
        rec->text = ds->text;
        rec->text_len = ds->text ? strlen(ds->text) : 0;
        rec->line = ds->line_no;
        *has_record = 1;
        return FINCH_OK;
    }
}
