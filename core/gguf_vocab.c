/* A Hugging Face tokenizer.json as llama.cpp's tokenizer.* keys. */
#include "core/error.h"
#include "core/files.h"
#include "core/gguf_model.h"
#include "core/str_map.h"
#include "finch/data.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { TOKEN_NORMAL = 1, TOKEN_UNKNOWN = 2, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4, TOKEN_UNUSED = 5, TOKEN_BYTE = 6 };

void gguf_vocab_info_free(gguf_vocab_info *info)
{
    free(info->chat_template);
    free(info->eos_token);
    memset(info, 0, sizeof *info);
}

static const cJSON *get(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

/* Does any node under j hold the string s (as a value)? */
static int json_mentions(const cJSON *j, const char *s)
{
    if (!j) return 0;
    if (cJSON_IsString(j) && strstr(j->valuestring, s)) return 1;
    for (const cJSON *c = j->child; c; c = c->next)
        if (json_mentions(c, s)) return 1;
    return 0;
}

/* llama.cpp picks its pre-tokenizer by name; these are the split patterns of the ones we know. */
static const char *pre_tokenizer_name(const cJSON *pre)
{
    static const struct { const char *pattern, *name; } known[] = {
        {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "llama-bpe"},
        {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "qwen2"},
        {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", "gpt-2"},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (json_mentions(pre, known[i].pattern)) return known[i].name;
    return "default";
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

typedef struct vocab {
    int64_t n;
    const char **tokens;
    int32_t *types;
    float *scores;
    char **pads;               /* "[PAD<id>]" strings we made */
    const char **merges;
    char **merge_text;         /* merges given as pairs, joined with a space */
    size_t n_merges;
} vocab;

static void vocab_free(vocab *v)
{
    for (int64_t i = 0; v->pads && i < v->n; i++) free(v->pads[i]);
    for (size_t i = 0; v->merge_text && i < v->n_merges; i++) free(v->merge_text[i]);
    free(v->tokens);
    free(v->types);
    free(v->scores);
    free(v->pads);
    free((void *)v->merges);
    free(v->merge_text);
}

static int set_token(vocab *v, const char *path, const char *text, double id)
{
    if (!(id >= 0 && id == (double)(int64_t)id))
        return finch_error(FINCH_ERR_FORMAT, "%s: token '%s' has a bad id", path, text);
    if ((int64_t)id >= v->n)
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: token '%s' has id %lld, beyond the model's vocabulary of %lld", path, text,
                           (long long)id, (long long)v->n);
    v->tokens[(int64_t)id] = text;
    return FINCH_OK;
}

static int read_merges(vocab *v, const char *path, const cJSON *merges)
{
    v->n_merges = (size_t)cJSON_GetArraySize(merges);
    v->merges = calloc(v->n_merges + 1, sizeof *v->merges);
    v->merge_text = calloc(v->n_merges + 1, sizeof *v->merge_text);
    if (!v->merges || !v->merge_text) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    size_t i = 0;
    for (const cJSON *e = merges->child; e; e = e->next, i++) {
        if (cJSON_IsString(e)) {
            v->merges[i] = e->valuestring;
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) && cJSON_IsString(e->child->next)) {
            size_t a = strlen(e->child->valuestring), b = strlen(e->child->next->valuestring);
            char *s = malloc(a + b + 2);
            if (!s) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
            memcpy(s, e->child->valuestring, a);
            s[a] = ' ';
            memcpy(s + a + 1, e->child->next->valuestring, b + 1);
            v->merges[i] = v->merge_text[i] = s;
        } else {
            return finch_error(FINCH_ERR_FORMAT, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", path, i);
        }
    }
    return FINCH_OK;
}

/* SentencePiece ranks merges by score; a token made by merge k scores -k, so earlier merges win. */
static int merge_scores(vocab *v)
{
    str_map ids = {0};
    int rc = FINCH_OK;
    for (int64_t i = 0; i < v->n && !rc; i++)
        if (v->tokens[i] && str_map_put(&ids, v->tokens[i], strlen(v->tokens[i]), (int32_t)i)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
    char buf[1024];
    for (size_t k = 0; k < v->n_merges && !rc; k++) {
        const char *sp = strchr(v->merges[k], ' ');
        size_t a = sp ? (size_t)(sp - v->merges[k]) : 0, b = sp ? strlen(sp + 1) : 0;
        if (!sp || a + b >= sizeof buf) continue;
        memcpy(buf, v->merges[k], a);
        memcpy(buf + a, sp + 1, b);
        int32_t id = str_map_get(&ids, buf, a + b);
        if (id >= 0 && v->scores[id] == 0) v->scores[id] = -(float)(k + 1);
    }
    str_map_free(&ids);
    return rc;
}

static int is_byte_token(const char *s)
{
    return strlen(s) == 6 && !strncmp(s, "<0x", 3) && s[5] == '>';
}

/* add_bos / add_eos as the tokenizer's post-processor does them. */
static int special_added(const finch_tokenizer *tok, int32_t bos, int32_t eos, int *add_bos, int *add_eos)
{
    finch_tokens plain = {0}, special = {0};
    int rc = finch_tokenizer_encode(tok, "a", 1, 0, &plain);
    if (!rc) rc = finch_tokenizer_encode(tok, "a", 1, FINCH_ENCODE_ADD_SPECIAL, &special);
    if (!rc) {
        *add_bos = bos >= 0 && special.len > plain.len && special.ids[0] == bos;
        *add_eos = eos >= 0 && special.len > plain.len && special.ids[special.len - 1] == eos;
    }
    finch_tokens_free(&plain);
    finch_tokens_free(&special);
    return rc;
}

int gguf_vocab_keys(const char *dir, int64_t n_vocab, gguf_writer *w, gguf_vocab_info *info)
{
    memset(info, 0, sizeof *info);
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (access(path, F_OK)) return gguf_set_str(w, "tokenizer.ggml.model", "none");
    info->has_tokenizer = 1;
    finch_tokenizer *tok = NULL;
    cJSON *root = NULL;
    char *text = NULL;
    vocab v = {0};
    int rc = finch_tokenizer_load(dir, &tok);
    if (!rc) rc = finch_read_file(path, &text, NULL);
    if (!rc && !(root = cJSON_Parse(text))) rc = finch_error(FINCH_ERR_FORMAT, "%s: malformed JSON", path);
    free(text);
    if (rc) goto done;

    const cJSON *model = get(root, "model"), *type = model ? get(model, "type") : NULL, *vmap = model ? get(model, "vocab") : NULL;
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE") || !cJSON_IsObject(vmap)) {
        rc = finch_error(FINCH_ERR_UNSUPPORTED, "%s: GGUF export handles BPE tokenizers (model.type \"BPE\"), not %s", path,
                         cJSON_IsString(type) ? type->valuestring : "this one");
        goto done;
    }
    const cJSON *bf = get(model, "byte_fallback");
    int spm = cJSON_IsTrue(bf) || json_mentions(get(root, "decoder"), "\xe2\x96\x81");  /* "▁" */
    v.n = n_vocab;
    v.tokens = calloc((size_t)n_vocab + 1, sizeof *v.tokens);
    v.types = malloc(((size_t)n_vocab + 1) * sizeof *v.types);
    v.scores = calloc((size_t)n_vocab + 1, sizeof *v.scores);
    v.pads = calloc((size_t)n_vocab + 1, sizeof *v.pads);
    if (!v.tokens || !v.types || !v.scores || !v.pads) {
        rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        goto done;
    }
    for (int64_t i = 0; i < n_vocab; i++) v.types[i] = TOKEN_NORMAL;
    for (const cJSON *e = vmap->child; e && !rc; e = e->next) {
        if (!cJSON_IsNumber(e)) rc = finch_error(FINCH_ERR_FORMAT, "%s: vocab entry '%s' is not a number", path, e->string);
        else rc = set_token(&v, path, e->string, e->valuedouble);
        if (!rc && spm && is_byte_token(e->string)) v.types[e->valueint] = TOKEN_BYTE;
    }
    const cJSON *added = get(root, "added_tokens");
    for (const cJSON *e = added ? added->child : NULL; e && !rc; e = e->next) {
        const cJSON *id = get(e, "id"), *content = get(e, "content"), *special = get(e, "special");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(content)) {
            rc = finch_error(FINCH_ERR_FORMAT, "%s: an added token lacks id or content", path);
            break;
        }
        if (!(rc = set_token(&v, path, content->valuestring, id->valuedouble)))
            v.types[id->valueint] = cJSON_IsTrue(special) ? TOKEN_CONTROL : TOKEN_USER_DEFINED;
    }
    for (int64_t i = 0; i < n_vocab && !rc; i++) {
        if (v.tokens[i]) continue;
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
        if (!(v.pads[i] = strdup(pad))) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        v.tokens[i] = v.pads[i];
        v.types[i] = TOKEN_UNUSED;
    }
    const cJSON *merges = get(model, "merges");
    if (!rc && cJSON_IsArray(merges)) rc = read_merges(&v, path, merges);
    if (rc) goto done;

    finch_tokenizer_config tc;
    if ((rc = finch_tokenizer_config_get(tok, &tc))) goto done;
    if (tc.unk_id >= 0 && tc.unk_id < n_vocab) v.types[tc.unk_id] = TOKEN_UNKNOWN;
    int add_bos = 0, add_eos = 0;
    if ((rc = special_added(tok, tc.bos_id, tc.eos_id, &add_bos, &add_eos))) goto done;
    if (tc.add_bos_token >= 0) add_bos = tc.add_bos_token;
    if (tc.add_eos_token >= 0) add_eos = tc.add_eos_token;

    rc = gguf_set_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    if (!rc) rc = gguf_set_str(w, "tokenizer.ggml.pre", spm ? "default" : pre_tokenizer_name(get(root, "pre_tokenizer")));
    if (!rc) rc = gguf_set_arr_str(w, "tokenizer.ggml.tokens", v.tokens, (size_t)n_vocab);
    if (!rc && spm && !(rc = merge_scores(&v))) rc = gguf_set_arr_f32(w, "tokenizer.ggml.scores", v.scores, (size_t)n_vocab);
    if (!rc) rc = gguf_set_arr_i32(w, "tokenizer.ggml.token_type", v.types, (size_t)n_vocab);
    if (!rc && !spm) rc = gguf_set_arr_str(w, "tokenizer.ggml.merges", v.merges, v.n_merges);  /* llama.cpp needs the key */
    if (!rc && tc.bos_id >= 0) rc = gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)tc.bos_id);
    if (!rc && tc.eos_id >= 0) rc = gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)tc.eos_id);
    if (!rc && tc.unk_id >= 0) rc = gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)tc.unk_id);
    if (!rc && tc.pad_id >= 0) rc = gguf_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)tc.pad_id);
    if (!rc) rc = gguf_set_bool(w, "tokenizer.ggml.add_bos_token", add_bos);
    if (!rc) rc = gguf_set_bool(w, "tokenizer.ggml.add_eos_token", add_eos);
    if (!rc && tc.chat_template) rc = gguf_set_str(w, "tokenizer.chat_template", tc.chat_template);
    if (!rc) {
        info->chat_template = dup_or_null(tc.chat_template);
        info->eos_token = dup_or_null(tc.eos_token);
    }
done:
    vocab_free(&v);
    cJSON_Delete(root);
    finch_tokenizer_free(tok);
    if (rc) gguf_vocab_info_free(info);
    return rc;
}
