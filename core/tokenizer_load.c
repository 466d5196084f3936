/* Reading tokenizer.json and tokenizer_config.json into the pipeline structures of tokenizer.h.
 * Every component type not implemented here is an error naming it and its JSON path. */
#include "core/error.h"
#include "core/tokenizer.h"
#include "core/unicode.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct load_ctx {
    const char *path;
    finch_tokenizer *tok;
} load_ctx;

#define FAIL(st, ...) finch_error(st, __VA_ARGS__)

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            size_t c = cap ? cap * 2 : 1 << 20;
            char *p = realloc(buf, c + 1);
            if (!p) { free(buf); fclose(f); return NULL; }
            buf = p;
            cap = c;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static char *dup_str(const char *s) { return s ? strdup(s) : NULL; }

static const char *type_of(const cJSON *o) { const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type"); return cJSON_IsString(t) ? t->valuestring : NULL; }

static int get_bool(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static const char *get_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* {"String": "..."} or {"Regex": "..."} */
static int compile_pattern(const load_ctx *c, const cJSON *o, const char *where, tok_regex *re)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s = get_str(p, "String"), *r = get_str(p, "Regex");
    char what[256];
    snprintf(what, sizeof what, "%s: %s", c->path, where);
    if (s) return tok_regex_compile(re, s, 1, what);
    if (r) return tok_regex_compile(re, r, 0, what);
    return FAIL(FINCH_ERR_FORMAT, "%s: %s.pattern must be {\"String\"} or {\"Regex\"}", c->path, where);
}

/* ---- normalizers ---- */

static int parse_normalizer(const load_ctx *c, const cJSON *o, const char *where, tok_normalizer *nz)
{
    const char *t = type_of(o);
    memset(nz, 0, sizeof *nz);
    if (!t) return FAIL(FINCH_ERR_FORMAT, "%s: %s has no \"type\"", c->path, where);
    if (!strcmp(t, "NFC")) nz->type = NORM_NFC;
    else if (!strcmp(t, "NFD")) nz->type = NORM_NFD;
    else if (!strcmp(t, "NFKC")) nz->type = NORM_NFKC;
    else if (!strcmp(t, "NFKD")) nz->type = NORM_NFKD;
    else if (!strcmp(t, "Lowercase")) nz->type = NORM_LOWERCASE;
    else if (!strcmp(t, "Strip")) {
        nz->type = NORM_STRIP;
        nz->strip_left = get_bool(o, "strip_left", 1);
        nz->strip_right = get_bool(o, "strip_right", 1);
    } else if (!strcmp(t, "Prepend")) {
        nz->type = NORM_PREPEND;
        const char *p = get_str(o, "prepend");
        if (!p) return FAIL(FINCH_ERR_FORMAT, "%s: %s (Prepend) has no \"prepend\" string", c->path, where);
        nz->content = dup_str(p);
    } else if (!strcmp(t, "Replace")) {
        nz->type = NORM_REPLACE;
        const char *content = get_str(o, "content");
        if (!content) return FAIL(FINCH_ERR_FORMAT, "%s: %s (Replace) has no \"content\"", c->path, where);
        nz->content = dup_str(content);
        return compile_pattern(c, o, where, &nz->pattern);
    } else if (!strcmp(t, "Sequence")) {
        nz->type = NORM_SEQUENCE;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "normalizers");
        int n = cJSON_GetArraySize(list);
        if (!cJSON_IsArray(list)) return FAIL(FINCH_ERR_FORMAT, "%s: %s (Sequence) has no \"normalizers\" array", c->path, where);
        nz->children = calloc((size_t)n + 1, sizeof *nz->children);
        if (!nz->children) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
        for (int i = 0; i < n; i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.normalizers[%d]", where, i);
            nz->n_children = i + 1;
            int rc = parse_normalizer(c, cJSON_GetArrayItem(list, i), w, &nz->children[i]);
            if (rc) return rc;
        }
    } else {
        return FAIL(FINCH_ERR_UNSUPPORTED, "%s: %s: normalizer type \"%s\" is not supported", c->path, where, t);
    }
    return FINCH_OK;
}

/* ---- pre-tokenizers ---- */

static const char *GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_replacement(const load_ctx *c, const cJSON *o, const char *where, char *dst)
{
    const char *r = get_str(o, "replacement");
    if (!r) r = "\xE2\x96\x81";
    if (strlen(r) >= 8 || !*r) return FAIL(FINCH_ERR_FORMAT, "%s: %s: bad Metaspace replacement", c->path, where);
    strcpy(dst, r);
    return FINCH_OK;
}

static int parse_prepend_scheme(const load_ctx *c, const cJSON *o, const char *where, tok_prepend_scheme *out)
{
    const char *s = get_str(o, "prepend_scheme");
    if (!s) { *out = get_bool(o, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER; return FINCH_OK; }
    if (!strcmp(s, "always")) *out = PREPEND_ALWAYS;
    else if (!strcmp(s, "first")) *out = PREPEND_FIRST;
    else if (!strcmp(s, "never")) *out = PREPEND_NEVER;
    else return FAIL(FINCH_ERR_UNSUPPORTED, "%s: %s: prepend_scheme \"%s\" is not supported", c->path, where, s);
    return FINCH_OK;
}

static int parse_pretokenizer(const load_ctx *c, const cJSON *o, const char *where, tok_pretokenizer *pt)
{
    const char *t = type_of(o);
    char what[256];
    snprintf(what, sizeof what, "%s: %s", c->path, where);
    memset(pt, 0, sizeof *pt);
    if (!t) return FAIL(FINCH_ERR_FORMAT, "%s: %s has no \"type\"", c->path, where);
    if (!strcmp(t, "Split")) {
        pt->type = PRE_SPLIT;
        const char *b = get_str(o, "behavior");
        if (!b) return FAIL(FINCH_ERR_FORMAT, "%s: %s (Split) has no \"behavior\"", c->path, where);
        if (!strcmp(b, "Removed")) pt->behavior = SPLIT_REMOVED;
        else if (!strcmp(b, "Isolated")) pt->behavior = SPLIT_ISOLATED;
        else if (!strcmp(b, "MergedWithPrevious")) pt->behavior = SPLIT_MERGED_PREVIOUS;
        else if (!strcmp(b, "MergedWithNext")) pt->behavior = SPLIT_MERGED_NEXT;
        else if (!strcmp(b, "Contiguous")) pt->behavior = SPLIT_CONTIGUOUS;
        else return FAIL(FINCH_ERR_UNSUPPORTED, "%s: %s: Split behavior \"%s\" is not supported", c->path, where, b);
        pt->invert = get_bool(o, "invert", 0);
        return compile_pattern(c, o, where, &pt->pattern);
    }
    if (!strcmp(t, "ByteLevel")) {
        pt->type = PRE_BYTE_LEVEL;
        pt->add_prefix_space = get_bool(o, "add_prefix_space", 1);
        pt->use_regex = get_bool(o, "use_regex", 1);
        return pt->use_regex ? tok_regex_compile(&pt->pattern, GPT2_PATTERN, 0, what) : FINCH_OK;
    }
    if (!strcmp(t, "Metaspace")) {
        pt->type = PRE_METASPACE;
        pt->split = get_bool(o, "split", 1);
        int rc = parse_replacement(c, o, where, pt->replacement);
        return rc ? rc : parse_prepend_scheme(c, o, where, &pt->prepend);
    }
    if (!strcmp(t, "Digits")) {
        pt->type = PRE_DIGITS;
        pt->individual_digits = get_bool(o, "individual_digits", 0);
        pt->behavior = SPLIT_ISOLATED;
        return tok_regex_compile(&pt->pattern, pt->individual_digits ? "\\p{N}" : "\\p{N}+", 0, what);
    }
    if (!strcmp(t, "Whitespace")) {
        pt->type = PRE_WHITESPACE;
        pt->behavior = SPLIT_REMOVED;
        pt->invert = 1;
        return tok_regex_compile(&pt->pattern, "\\w+|[^\\w\\s]+", 0, what);
    }
    if (!strcmp(t, "WhitespaceSplit")) {
        pt->type = PRE_WHITESPACE_SPLIT;
        pt->behavior = SPLIT_REMOVED;
        return tok_regex_compile(&pt->pattern, "\\s+", 0, what);
    }
    if (!strcmp(t, "Sequence")) {
        pt->type = PRE_SEQUENCE;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers");
        if (!cJSON_IsArray(list)) return FAIL(FINCH_ERR_FORMAT, "%s: %s (Sequence) has no \"pretokenizers\" array", c->path, where);
        int n = cJSON_GetArraySize(list);
        pt->children = calloc((size_t)n + 1, sizeof *pt->children);
        if (!pt->children) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
        for (int i = 0; i < n; i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.pretokenizers[%d]", where, i);
            pt->n_children = i + 1;
            int rc = parse_pretokenizer(c, cJSON_GetArrayItem(list, i), w, &pt->children[i]);
            if (rc) return rc;
        }
        return FINCH_OK;
    }
    return FAIL(FINCH_ERR_UNSUPPORTED, "%s: %s: pre-tokenizer type \"%s\" is not supported", c->path, where, t);
}

/* ---- the model ---- */

static int parse_model(const load_ctx *c, const cJSON *o)
{
    tok_bpe *m = &c->tok->bpe;
    const char *t = type_of(o);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(o, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(o, "merges");
    if (t && strcmp(t, "BPE"))
        return FAIL(FINCH_ERR_UNSUPPORTED, "%s: model type \"%s\" is not supported (only BPE)", c->path, t);
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return FAIL(FINCH_ERR_FORMAT, "%s: model needs a \"vocab\" object and a \"merges\" array", c->path);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(o, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        return FAIL(FINCH_ERR_UNSUPPORTED, "%s: model.dropout %g: BPE dropout is not supported", c->path, dropout->valuedouble);
    m->unk_id = -1;
    m->fuse_unk = get_bool(o, "fuse_unk", 0);
    m->byte_fallback = get_bool(o, "byte_fallback", 0);
    m->ignore_merges = get_bool(o, "ignore_merges", 0);
    m->continuing_prefix = dup_str(get_str(o, "continuing_subword_prefix"));
    m->end_suffix = dup_str(get_str(o, "end_of_word_suffix"));
    if (m->continuing_prefix && !*m->continuing_prefix) { free(m->continuing_prefix); m->continuing_prefix = NULL; }
    if (m->end_suffix && !*m->end_suffix) { free(m->end_suffix); m->end_suffix = NULL; }
    if ((m->continuing_prefix && strlen(m->continuing_prefix) > 16) || (m->end_suffix && strlen(m->end_suffix) > 16))
        return FAIL(FINCH_ERR_UNSUPPORTED, "%s: model subword prefix/suffix longer than 16 bytes", c->path);

    int32_t max_id = -1;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 1e9)
            return FAIL(FINCH_ERR_FORMAT, "%s: model.vocab[\"%s\"] is not a valid id", c->path, e->string);
        int32_t id = (int32_t)e->valuedouble;
        if (str_map_put(&m->vocab, e->string, strlen(e->string), id)) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer vocab");
        if (id > max_id) max_id = id;
    }
    c->tok->n_ids = max_id + 1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_ids[b] = str_map_get(&m->vocab, name, 6);
    }
    const char *unk = get_str(o, "unk_token");
    if (unk) {
        m->unk_id = str_map_get(&m->vocab, unk, strlen(unk));
        if (m->unk_id < 0) return FAIL(FINCH_ERR_FORMAT, "%s: model.unk_token \"%s\" is not in the vocab", c->path, unk);
    }

    int n = cJSON_GetArraySize(merges);
    int rc = tok_bpe_reserve_merges(m, (size_t)n);
    if (rc) return rc;
    char *joined = NULL;
    size_t jcap = 0;
    int i = 0;
    for (const cJSON *e = merges->child; e; e = e->next, i++) {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) { free(joined); return FAIL(FINCH_ERR_FORMAT, "%s: model.merges[%d] \"%s\" is not two tokens", c->path, i, e->valuestring); }
            a = e->valuestring; la = (size_t)(sp - a);
            b = sp + 1; lb = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) && cJSON_IsString(e->child->next)) {
            a = e->child->valuestring; la = strlen(a);
            b = e->child->next->valuestring; lb = strlen(b);
        } else {
            free(joined);
            return FAIL(FINCH_ERR_FORMAT, "%s: model.merges[%d] is neither \"a b\" nor [a, b]", c->path, i);
        }
        if (la + lb + 1 > jcap) {
            jcap = 2 * (la + lb + 1);
            char *p = realloc(joined, jcap);
            if (!p) { free(joined); return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer merges"); }
            joined = p;
        }
        memcpy(joined, a, la);
        memcpy(joined + la, b, lb);
        int32_t ia = str_map_get(&m->vocab, a, la), ib = str_map_get(&m->vocab, b, lb);
        int32_t inew = str_map_get(&m->vocab, joined, la + lb);
        if (ia < 0 || ib < 0 || inew < 0) {
            rc = FAIL(FINCH_ERR_FORMAT, "%s: model.merges[%d] (\"%.*s\", \"%.*s\"): %s is not in the vocab", c->path, i,
                      (int)la, a, (int)lb, b, ia < 0 ? "the left token" : ib < 0 ? "the right token" : "the merged token");
            free(joined);
            return rc;
        }
        tok_bpe_add_merge(m, ia, ib, i, inew);
    }
    free(joined);
    return FINCH_OK;
}

/* ---- added tokens ---- */

static int parse_added(const load_ctx *c, const cJSON *list)
{
    finch_tokenizer *tok = c->tok;
    if (!list || cJSON_IsNull(list)) return FINCH_OK;
    if (!cJSON_IsArray(list)) return FAIL(FINCH_ERR_FORMAT, "%s: \"added_tokens\" is not an array", c->path);
    int n = cJSON_GetArraySize(list);
    tok->added = calloc((size_t)n + 1, sizeof *tok->added);
    if (!tok->added) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
    int i = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const char *content = get_str(e, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || !content || !*content)
            return FAIL(FINCH_ERR_FORMAT, "%s: added_tokens[%d] needs an \"id\" and a non-empty \"content\"", c->path, i);
        tok_added *a = &tok->added[tok->n_added++];
        a->content = dup_str(content);
        a->len = strlen(content);
        a->id = (int32_t)id->valuedouble;
        a->special = get_bool(e, "special", 0);
        a->lstrip = get_bool(e, "lstrip", 0);
        a->rstrip = get_bool(e, "rstrip", 0);
        a->normalized = get_bool(e, "normalized", !a->special);
        a->single_word = get_bool(e, "single_word", 0);
        if (a->id + 1 > tok->n_ids) tok->n_ids = a->id + 1;
    }
    return FINCH_OK;
}

/* ---- post-processor ---- */

static int parse_post(const load_ctx *c, const cJSON *o, const char *where, tok_post *p)
{
    const char *t = type_of(o);
    memset(p, 0, sizeof *p);
    if (!t) return FAIL(FINCH_ERR_FORMAT, "%s: %s has no \"type\"", c->path, where);
    if (!strcmp(t, "ByteLevel")) { p->type = POST_BYTE_LEVEL; return FINCH_OK; }
    if (!strcmp(t, "TemplateProcessing")) {
        p->type = POST_TEMPLATE;
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single");
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
        if (!cJSON_IsArray(single)) return FAIL(FINCH_ERR_FORMAT, "%s: %s (TemplateProcessing) has no \"single\" array", c->path, where);
        int n = cJSON_GetArraySize(single);
        p->items = calloc((size_t)n + 1, sizeof *p->items);
        if (!p->items) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
        for (const cJSON *e = single->child; e; e = e->next) {
            struct tok_post_item *it = &p->items[p->n_items++];
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
            const cJSON *seq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
            if (seq) {
                const char *id = get_str(seq, "id");
                if (!id || strcmp(id, "A"))
                    return FAIL(FINCH_ERR_UNSUPPORTED, "%s: %s.single: sequence \"%s\" (only A) is not supported", c->path, where, id ? id : "?");
                it->n_ids = -1;
                continue;
            }
            const char *name = get_str(sp, "id");
            const cJSON *def = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
            if (!cJSON_IsArray(ids))
                return FAIL(FINCH_ERR_FORMAT, "%s: %s: special token \"%s\" has no ids in special_tokens", c->path, where, name ? name : "?");
            int k = cJSON_GetArraySize(ids);
            it->ids = malloc(((size_t)k + 1) * sizeof *it->ids);
            if (!it->ids) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
            for (const cJSON *x = ids->child; x; x = x->next) it->ids[it->n_ids++] = (int32_t)x->valuedouble;
        }
        return FINCH_OK;
    }
    if (!strcmp(t, "BertProcessing") || !strcmp(t, "RobertaProcessing")) {
        p->type = POST_BERT;
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(o, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(o, "sep");
        if (!cJSON_IsArray(cls) || !cJSON_IsArray(sep) || !cJSON_IsNumber(cJSON_GetArrayItem(cls, 1)) ||
            !cJSON_IsNumber(cJSON_GetArrayItem(sep, 1)))
            return FAIL(FINCH_ERR_FORMAT, "%s: %s (%s) needs cls and sep as [token, id]", c->path, where, t);
        p->items = calloc(3, sizeof *p->items);
        if (!p->items) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
        p->n_items = 3;
        p->items[1].n_ids = -1;
        p->items[0].ids = malloc(sizeof(int32_t));
        p->items[2].ids = malloc(sizeof(int32_t));
        if (!p->items[0].ids || !p->items[2].ids) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
        p->items[0].ids[0] = (int32_t)cJSON_GetArrayItem(cls, 1)->valuedouble;
        p->items[2].ids[0] = (int32_t)cJSON_GetArrayItem(sep, 1)->valuedouble;
        p->items[0].n_ids = p->items[2].n_ids = 1;
        return FINCH_OK;
    }
    if (!strcmp(t, "Sequence")) {
        p->type = POST_SEQUENCE;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "processors");
        if (!cJSON_IsArray(list)) return FAIL(FINCH_ERR_FORMAT, "%s: %s (Sequence) has no \"processors\" array", c->path, where);
        int n = cJSON_GetArraySize(list);
        p->children = calloc((size_t)n + 1, sizeof *p->children);
        if (!p->children) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
        for (int i = 0; i < n; i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.processors[%d]", where, i);
            p->n_children = i + 1;
            int rc = parse_post(c, cJSON_GetArrayItem(list, i), w, &p->children[i]);
            if (rc) return rc;
        }
        return FINCH_OK;
    }
    return FAIL(FINCH_ERR_UNSUPPORTED, "%s: %s: post-processor type \"%s\" is not supported", c->path, where, t);
}

/* ---- decoder ---- */

static int parse_decoder(const load_ctx *c, const cJSON *o, const char *where, tok_decoder *d)
{
    const char *t = type_of(o);
    memset(d, 0, sizeof *d);
    if (!t) return FAIL(FINCH_ERR_FORMAT, "%s: %s has no \"type\"", c->path, where);
    if (!strcmp(t, "ByteLevel")) { d->type = DEC_BYTE_LEVEL; return FINCH_OK; }
    if (!strcmp(t, "ByteFallback")) { d->type = DEC_BYTE_FALLBACK; return FINCH_OK; }
    if (!strcmp(t, "Fuse")) { d->type = DEC_FUSE; return FINCH_OK; }
    if (!strcmp(t, "Metaspace")) {
        d->type = DEC_METASPACE;
        tok_prepend_scheme ps = PREPEND_ALWAYS;
        int rc = parse_replacement(c, o, where, d->replacement);
        if (!rc) rc = parse_prepend_scheme(c, o, where, &ps);
        d->prepend_first = ps != PREPEND_NEVER;
        return rc;
    }
    if (!strcmp(t, "Strip")) {
        d->type = DEC_STRIP;
        const char *content = get_str(o, "content");
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(o, "start"), *stop = cJSON_GetObjectItemCaseSensitive(o, "stop");
        if (!content || !*content) return FAIL(FINCH_ERR_FORMAT, "%s: %s (Strip) has no \"content\" character", c->path, where);
        size_t pos = 0;
        d->strip_char = utf8_next(content, &pos);
        d->strip_start = cJSON_IsNumber(start) ? (int)start->valuedouble : 0;
        d->strip_stop = cJSON_IsNumber(stop) ? (int)stop->valuedouble : 0;
        return FINCH_OK;
    }
    if (!strcmp(t, "Replace")) {
        d->type = DEC_REPLACE;
        const char *content = get_str(o, "content");
        if (!content) return FAIL(FINCH_ERR_FORMAT, "%s: %s (Replace) has no \"content\"", c->path, where);
        d->content = dup_str(content);
        return compile_pattern(c, o, where, &d->pattern);
    }
    if (!strcmp(t, "Sequence")) {
        d->type = DEC_SEQUENCE;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "decoders");
        if (!cJSON_IsArray(list)) return FAIL(FINCH_ERR_FORMAT, "%s: %s (Sequence) has no \"decoders\" array", c->path, where);
        int n = cJSON_GetArraySize(list);
        d->children = calloc((size_t)n + 1, sizeof *d->children);
        if (!d->children) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
        for (int i = 0; i < n; i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.decoders[%d]", where, i);
            d->n_children = i + 1;
            int rc = parse_decoder(c, cJSON_GetArrayItem(list, i), w, &d->children[i]);
            if (rc) return rc;
        }
        return FINCH_OK;
    }
    return FAIL(FINCH_ERR_UNSUPPORTED, "%s: %s: decoder type \"%s\" is not supported", c->path, where, t);
}

/* ---- the whole file ---- */

static int build_id_table(const load_ctx *c)
{
    finch_tokenizer *tok = c->tok;
    tok->id_to_token = calloc((size_t)tok->n_ids + 1, sizeof *tok->id_to_token);
    tok->id_special = calloc((size_t)tok->n_ids + 1, 1);
    if (!tok->id_to_token || !tok->id_special) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
    const str_map *v = &tok->bpe.vocab;
    for (size_t i = 0; v->slots && i <= v->mask; i++) {
        const struct str_map_slot *s = &v->slots[i];
        if (s->key_len == UINT32_MAX || tok->id_to_token[s->value]) continue;
        tok->id_to_token[s->value] = strndup(v->keys + s->key_off, s->key_len);
        if (!tok->id_to_token[s->value]) return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
    }
    for (int i = 0; i < tok->n_added; i++) {
        tok_added *a = &tok->added[i];
        free(tok->id_to_token[a->id]);
        tok->id_to_token[a->id] = dup_str(a->content);
        tok->id_special[a->id] = (uint8_t)a->special;
        if (!tok->id_to_token[a->id] || str_map_put(&tok->added_map, a->content, a->len, a->id) ||
            tok_trie_add(a->normalized ? &tok->trie_norm : &tok->trie_raw, a->content, a->len, i))
            return FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
        if (a->normalized) tok->has_norm_added = 1;
    }
    return FINCH_OK;
}

int tok_load_json(finch_tokenizer *tok, const char *json_path)
{
    size_t len;
    char *text = read_file(json_path, &len);
    if (!text) return FAIL(FINCH_ERR_IO, "%s: cannot read the file", json_path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return FAIL(FINCH_ERR_FORMAT, "%s: not a JSON object", json_path);
    }
    load_ctx c = {json_path, tok};
    int rc = FINCH_OK;
    const cJSON *o;
    if (rc == FINCH_OK && (o = cJSON_GetObjectItemCaseSensitive(root, "model")) && cJSON_IsObject(o)) rc = parse_model(&c, o);
    else if (rc == FINCH_OK) rc = FAIL(FINCH_ERR_FORMAT, "%s: no \"model\" object", json_path);
    if (rc == FINCH_OK) rc = parse_added(&c, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"));
    if (rc == FINCH_OK && (o = cJSON_GetObjectItemCaseSensitive(root, "normalizer")) && cJSON_IsObject(o)) {
        tok->normalizer = calloc(1, sizeof *tok->normalizer);
        rc = tok->normalizer ? parse_normalizer(&c, o, "normalizer", tok->normalizer) : FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
    }
    if (rc == FINCH_OK && (o = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")) && cJSON_IsObject(o)) {
        tok->pretokenizer = calloc(1, sizeof *tok->pretokenizer);
        rc = tok->pretokenizer ? parse_pretokenizer(&c, o, "pre_tokenizer", tok->pretokenizer) : FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
    }
    if (rc == FINCH_OK && (o = cJSON_GetObjectItemCaseSensitive(root, "post_processor")) && cJSON_IsObject(o)) {
        tok->post = calloc(1, sizeof *tok->post);
        rc = tok->post ? parse_post(&c, o, "post_processor", tok->post) : FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
    }
    if (rc == FINCH_OK && (o = cJSON_GetObjectItemCaseSensitive(root, "decoder")) && cJSON_IsObject(o)) {
        tok->decoder = calloc(1, sizeof *tok->decoder);
        rc = tok->decoder ? parse_decoder(&c, o, "decoder", tok->decoder) : FAIL(FINCH_ERR_OUT_OF_MEMORY, "tokenizer");
    }
    if (rc == FINCH_OK) rc = build_id_table(&c);
    if (rc == FINCH_OK) {
        /* A final ByteLevel step's character map moves into the model, which then sees raw bytes. */
        tok_pretokenizer *last = tok->pretokenizer;
        while (last && last->type == PRE_SEQUENCE) last = last->n_children ? &last->children[last->n_children - 1] : NULL;
        if (last && last->type == PRE_BYTE_LEVEL && !tok->bpe.continuing_prefix && !tok->bpe.end_suffix)
            last->raw_bytes = tok->bpe.byte_level = 1;
        rc = tok_bpe_prepare(&tok->bpe, !tok->pretokenizer || !tok_pretokenizer_splits(tok->pretokenizer));
    }
    cJSON_Delete(root);
    return rc;
}

/* A special token in tokenizer_config.json: "text" or {"content": "text", ...}. */
static char *config_token(const cJSON *root, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsString(v)) return dup_str(v->valuestring);
    if (cJSON_IsObject(v)) return dup_str(get_str(v, "content"));
    return NULL;
}

int tok_load_config(finch_tokenizer *tok, const char *config_path)
{
    size_t len;
    char *text = read_file(config_path, &len);
    if (!text) return FAIL(FINCH_ERR_IO, "%s: cannot read the file", config_path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return FAIL(FINCH_ERR_FORMAT, "%s: not a JSON object", config_path);
    }
    int rc = FINCH_OK;
    tok->bos_token = config_token(root, "bos_token");
    tok->eos_token = config_token(root, "eos_token");
    tok->pad_token = config_token(root, "pad_token");
    tok->unk_token = config_token(root, "unk_token");
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(root, "add_bos_token");
    const cJSON *ae = cJSON_GetObjectItemCaseSensitive(root, "add_eos_token");
    tok->add_bos_token = cJSON_IsBool(ab) ? cJSON_IsTrue(ab) : -1;
    tok->add_eos_token = cJSON_IsBool(ae) ? cJSON_IsTrue(ae) : -1;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (cJSON_IsString(ct)) {
        tok->chat_template = dup_str(ct->valuestring);
    } else if (cJSON_IsArray(ct)) {
        /* [{"name": "default", "template": "..."}, {"name": "tool_use", ...}] */
        for (const cJSON *e = ct->child; e; e = e->next) {
            const char *name = get_str(e, "name"), *tpl = get_str(e, "template");
            if (tpl && name && !strcmp(name, "default")) { tok->chat_template = dup_str(tpl); break; }
        }
        if (!tok->chat_template && ct->child && get_str(ct->child, "template"))
            tok->chat_template = dup_str(get_str(ct->child, "template"));
    } else if (ct && !cJSON_IsNull(ct)) {
        rc = FAIL(FINCH_ERR_FORMAT, "%s: \"chat_template\" is neither a string nor a list of named templates", config_path);
    }
    cJSON_Delete(root);
    return rc;
}
