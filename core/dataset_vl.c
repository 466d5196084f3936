/* Multimodal chat examples: image parts out of the messages, image tokens expanded (multimodal.h). */
#include "finch/multimodal.h"
#include "core/error.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void finch_image_paths_free(char **paths, size_t n)
{
    if (!paths) return;
    for (size_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

typedef struct path_list {
    char **items;
    size_t n, cap;
} path_list;

static int path_add(path_list *l, const char *base_dir, const char *path)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 4;
        char **p = realloc(l->items, cap * sizeof *p);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        l->items = p;
        l->cap = cap;
    }
    int relative = path[0] != '/' && base_dir && *base_dir;
    size_t len = strlen(path) + (relative ? strlen(base_dir) + 1 : 0) + 1;
    char *full = malloc(len);
    if (!full) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (relative) snprintf(full, len, "%s/%s", base_dir, path);
    else snprintf(full, len, "%s", path);
    l->items[l->n++] = full;
    return FINCH_OK;
}

static const char *string_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The local path of an image part, or an error naming where. */
static int image_path(const cJSON *part, const char *where, const char **out)
{
    const char *type = string_of(part, "type"), *p = NULL;
    if (type && !strcmp(type, "image_url")) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(part, "image_url");
        p = cJSON_IsString(u) ? u->valuestring : string_of(u, "url");
    } else {
        p = string_of(part, "image");
        if (!p) p = string_of(part, "path");
        if (!p) p = string_of(part, "url");
    }
    if (!p || !*p) return finch_error(FINCH_ERR_FORMAT, "%s: an image part needs a path (\"image\", \"path\", \"url\" or \"image_url\")", where);
    if (!strncmp(p, "file://", 7)) p += 7;
    if (!strncmp(p, "http://", 7) || !strncmp(p, "https://", 8) || !strncmp(p, "data:", 5))
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: image '%.80s' is not a local file (remote URLs and data: URIs are not read)",
                           where, p);
    *out = p;
    return FINCH_OK;
}

/* Joins a content list into one string, collecting image paths. */
static int join_parts(const cJSON *content, int msg, const char *base_dir, const char *image_text, path_list *paths,
                      char **out)
{
    size_t len = 0, cap = 256;
    char *s = malloc(cap);
    if (!s) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    s[0] = 0;
    int k = 0, rc = FINCH_OK;
    for (const cJSON *part = content->child; part && !rc; part = part->next, k++) {
        char where[64];
        snprintf(where, sizeof where, "messages[%d].content[%d]", msg, k);
        const char *add = NULL, *type = cJSON_IsObject(part) ? string_of(part, "type") : NULL;
        if (cJSON_IsString(part)) {
            add = part->valuestring;
        } else if (!cJSON_IsObject(part)) {
            rc = finch_error(FINCH_ERR_FORMAT, "%s: a content part must be an object", where);
        } else if ((type && !strcmp(type, "text")) || (!type && string_of(part, "text"))) {
            add = string_of(part, "text");
            if (!add) rc = finch_error(FINCH_ERR_FORMAT, "%s: a text part needs a string \"text\"", where);
        } else if (!type || !strcmp(type, "image") || !strcmp(type, "image_url")) {
            const char *p = NULL;
            if (!(rc = image_path(part, where, &p)) && !(rc = path_add(paths, base_dir, p))) add = image_text;
        } else {
            rc = finch_error(FINCH_ERR_UNSUPPORTED, "%s: content part type '%.40s' is not supported (text, image, image_url)",
                             where, type);
        }
        if (rc || !add) continue;
        size_t n = strlen(add);
        if (len + n + 1 > cap) {
            while (len + n + 1 > cap) cap *= 2;
            char *p = realloc(s, cap);
            if (!p) {
                rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
                continue;
            }
            s = p;
        }
        memcpy(s + len, add, n + 1);
        len += n;
    }
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    return FINCH_OK;
}

finch_status finch_messages_extract_images(const char *messages_json, const char *base_dir, const char *image_text,
                                           char **out_messages_json, char ***out_paths, size_t *out_n)
{
    if (!messages_json || !out_messages_json || !out_paths || !out_n)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_messages_extract_images: NULL argument");
    *out_messages_json = NULL;
    *out_paths = NULL;
    *out_n = 0;
    if (!image_text) image_text = FINCH_QWEN2VL_IMAGE_TEXT;
    cJSON *msgs = cJSON_Parse(messages_json);
    if (!cJSON_IsArray(msgs)) {
        cJSON_Delete(msgs);
        return finch_error(FINCH_ERR_FORMAT, "messages: not a JSON array");
    }
    path_list paths = {0};
    int i = 0, rc = FINCH_OK;
    for (cJSON *m = msgs->child; m && !rc; m = m->next, i++) {
        cJSON *content = cJSON_IsObject(m) ? cJSON_GetObjectItemCaseSensitive(m, "content") : NULL;
        if (!cJSON_IsArray(content)) continue;
        char *joined = NULL;
        if ((rc = join_parts(content, i, base_dir, image_text, &paths, &joined))) break;
        cJSON *str = cJSON_CreateString(joined);
        free(joined);
        if (!str || !cJSON_ReplaceItemInObjectCaseSensitive(m, "content", str)) {
            cJSON_Delete(str);
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        }
    }
    char *text = rc ? NULL : cJSON_PrintUnformatted(msgs);
    cJSON_Delete(msgs);
    if (!rc && !text) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    if (rc) {
        finch_image_paths_free(paths.items, paths.n);
        return rc;
    }
    /* cJSON's allocator is malloc here (never overridden in finch), so finch_data_free frees it. */
    *out_messages_json = text;
    *out_paths = paths.items;
    *out_n = paths.n;
    return FINCH_OK;
}

finch_status finch_example_expand_image_tokens(finch_example *ex, int32_t pad_id, const int64_t *counts, size_t n)
{
    if (!ex || (n && !counts)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_example_expand_image_tokens: NULL argument");
    size_t pads = 0, extra = 0;
    for (size_t i = 0; i < ex->ids.len; i++) pads += ex->ids.ids[i] == pad_id;
    if (pads != n)
        return finch_error(FINCH_ERR_FORMAT, "example: %zu image pad tokens (id %d) for %zu image(s)", pads, pad_id, n);
    for (size_t k = 0; k < n; k++) {
        if (counts[k] < 1 || counts[k] > (1 << 24))
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "image %zu: %lld image tokens", k, (long long)counts[k]);
        extra += (size_t)counts[k] - 1;
    }
    if (ex->labels.len != ex->ids.len)
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "example: %zu ids but %zu labels", ex->ids.len, ex->labels.len);
    size_t len = ex->ids.len + extra;
    int32_t *ids = malloc((len + 1) * sizeof *ids), *labels = malloc((len + 1) * sizeof *labels);
    if (!ids || !labels) {
        free(ids);
        free(labels);
        return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    size_t at = 0, k = 0;
    for (size_t i = 0; i < ex->ids.len; i++) {
        int64_t copies = ex->ids.ids[i] == pad_id ? counts[k++] : 1;
        for (int64_t c = 0; c < copies; c++, at++) {
            ids[at] = ex->ids.ids[i];
            labels[at] = ex->ids.ids[i] == pad_id ? FINCH_LABEL_IGNORE : ex->labels.ids[i];
        }
    }
    free(ex->ids.ids);
    free(ex->labels.ids);
    ex->ids.ids = ids;
    ex->labels.ids = labels;
    ex->ids.len = ex->labels.len = len;
    ex->ids.cap = ex->labels.cap = len + 1;
    return FINCH_OK;
}
