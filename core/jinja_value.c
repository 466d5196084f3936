/* Jinja values: the arena they live in, their Python semantics (truthiness, equality, str(), repr()),
 * JSON in (cJSON) and out (json.dumps). */
#include "core/jinja.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---- */

struct jchunk { struct jchunk *next; size_t used, cap; _Alignas(16) unsigned char data[]; };


void *ja_alloc(jarena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct jchunk *h = a->head;
    if (!h || h->used + n > h->cap) {
        size_t cap = n > 65536 ? n : 65536;
        h = malloc(sizeof *h + cap);
        if (!h) return NULL;
        h->next = a->head;
        h->used = 0;
        h->cap = cap;
        a->head = h;
    }
    void *p = h->data + h->used;
    h->used += n;
    memset(p, 0, n);
    return p;
}

void ja_free(jarena *a)
{
    for (struct jchunk *h = a->head, *next; h; h = next) {
        next = h->next;
        free(h);
    }
    a->head = NULL;
}

static void *alloc(jctx *c, size_t n)
{
    void *p = ja_alloc(c->arena, n);
    if (!p) jerr(c, "out of memory");
    return p;
}

_Noreturn void jerr(jctx *c, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!c->err) {
        size_t n = strlen(msg) + strlen(c->tname ? c->tname : "template") + 64;
        c->err = malloc(n);
        if (c->err) snprintf(c->err, n, "%s:%d: %s", c->tname ? c->tname : "template", c->line, msg);
    }
    longjmp(*c->jump, 1);
}

/* ---- buffers and constructors ---- */

void jb_put(jctx *c, jbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = alloc(c, cap);
        if (b->len) memcpy(p, b->p, b->len);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

jv jv_str(jctx *c, const char *s, size_t n)
{
    jstr *js = alloc(c, sizeof *js + n + 1);
    js->len = n;
    if (n && s) memcpy(js->p, s, n); /* s == NULL: left zeroed for the caller to fill */
    js->p[n] = 0;
    jv v = {.t = JV_STRING};
    v.s = js;
    return v;
}

jv jv_cstr(jctx *c, const char *s) { return jv_str(c, s, strlen(s)); }

jv jv_list(jctx *c, size_t cap)
{
    jlist *l = alloc(c, sizeof *l);
    l->cap = cap ? cap : 4;
    l->v = alloc(c, l->cap * sizeof *l->v);
    jv v = {.t = JV_LIST};
    v.l = l;
    return v;
}

jv jv_dict(jctx *c, size_t cap)
{
    jdict *d = alloc(c, sizeof *d);
    d->cap = cap ? cap : 4;
    d->k = alloc(c, d->cap * sizeof *d->k);
    d->v = alloc(c, d->cap * sizeof *d->v);
    jv v = {.t = JV_DICT};
    v.d = d;
    return v;
}

void jl_push(jctx *c, jv list, jv item)
{
    jlist *l = list.l;
    if (l->n == l->cap) {
        jv *p = alloc(c, 2 * l->cap * sizeof *p);
        memcpy(p, l->v, l->n * sizeof *p);
        l->v = p;
        l->cap *= 2;
    }
    l->v[l->n++] = item;
}

void jd_set(jctx *c, jv dict, jv key, jv val)
{
    jdict *d = dict.d;
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(d->k[i], key)) { d->v[i] = val; return; }
    if (d->n == d->cap) {
        jv *k = alloc(c, 2 * d->cap * sizeof *k), *v = alloc(c, 2 * d->cap * sizeof *v);
        memcpy(k, d->k, d->n * sizeof *k);
        memcpy(v, d->v, d->n * sizeof *v);
        d->k = k;
        d->v = v;
        d->cap *= 2;
    }
    d->k[d->n] = key;
    d->v[d->n++] = val;
}

int jd_get(jv dict, jv key, jv *out)
{
    if (dict.t != JV_DICT) return 0;
    for (size_t i = 0; i < dict.d->n; i++)
        if (jv_equal(dict.d->k[i], key)) { *out = dict.d->v[i]; return 1; }
    return 0;
}

int jd_get_cstr(jv dict, const char *key, jv *out)
{
    if (dict.t != JV_DICT) return 0;
    size_t n = strlen(key);
    for (size_t i = 0; i < dict.d->n; i++) {
        jv k = dict.d->k[i];
        if (k.t == JV_STRING && k.s->len == n && memcmp(k.s->p, key, n) == 0) { *out = dict.d->v[i]; return 1; }
    }
    return 0;
}

/* ---- Python semantics ---- */

const char *jv_type_name(jv v)
{
    switch (v.t) {
    case JV_UNDEFINED: return "undefined";
    case JV_NONE: return "none";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STRING: return "string";
    case JV_LIST: return "list";
    case JV_DICT: return v.d->is_namespace ? "namespace" : "dict";
    case JV_FUNC: return "function";
    }
    return "?";
}

int jv_truthy(jv v)
{
    switch (v.t) {
    case JV_UNDEFINED: case JV_NONE: return 0;
    case JV_BOOL: return v.b;
    case JV_INT: return v.i != 0;
    case JV_FLOAT: return v.f != 0;
    case JV_STRING: return v.s->len != 0;
    case JV_LIST: return v.l->n != 0;
    case JV_DICT: return v.d->is_namespace || v.d->n != 0;
    case JV_FUNC: return 1;
    }
    return 0;
}

static int is_num(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static double num(jv v) { return v.t == JV_FLOAT ? v.f : v.t == JV_INT ? (double)v.i : (double)v.b; }

int jv_equal(jv a, jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) return (a.t == JV_INT ? a.i : a.b) == (b.t == JV_INT ? b.i : b.b);
        return num(a) == num(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case JV_UNDEFINED: case JV_NONE: return 1;
    case JV_STRING: return a.s->len == b.s->len && memcmp(a.s->p, b.s->p, a.s->len) == 0;
    case JV_LIST:
        if (a.l->n != b.l->n) return 0;
        for (size_t i = 0; i < a.l->n; i++) if (!jv_equal(a.l->v[i], b.l->v[i])) return 0;
        return 1;
    case JV_DICT:
        if (a.d == b.d) return 1;
        if (a.d->n != b.d->n || a.d->is_namespace || b.d->is_namespace) return 0;
        for (size_t i = 0; i < a.d->n; i++) {
            jv other;
            if (!jd_get(b, a.d->k[i], &other) || !jv_equal(a.d->v[i], other)) return 0;
        }
        return 1;
    case JV_FUNC: return a.fn == b.fn;
    default: return 0;
    }
}

/* Python's repr(float): the shortest digits that round-trip, fixed notation for 1e-4 <= |x| < 1e16. */
static void float_repr(double x, char *out, size_t cap, int json)
{
    if (isnan(x)) { snprintf(out, cap, "%s", json ? "NaN" : "nan"); return; }
    if (isinf(x)) { snprintf(out, cap, "%s%s", x < 0 ? "-" : "", json ? "Infinity" : "inf"); return; }
    char e[64];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, x);
        if (strtod(e, NULL) == x) break;
    }
    char digits[32];
    int nd = 0, neg = e[0] == '-';
    const char *q = e + neg;
    for (; *q && *q != 'e'; q++) if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int exp = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    char *o = out;
    size_t left = cap;
#define PUT(...) do { int k_ = snprintf(o, left, __VA_ARGS__); if (k_ < 0 || (size_t)k_ >= left) return; o += k_; left -= (size_t)k_; } while (0)
    if (neg) PUT("-");
    if (exp >= -4 && exp < 16) {
        if (exp >= 0) {
            for (int i = 0; i <= exp; i++) PUT("%c", i < nd ? digits[i] : '0');
            PUT(".");
            if (nd > exp + 1) PUT("%s", digits + exp + 1);
            else PUT("0");
        } else {
            PUT("0.");
            for (int i = 0; i < -exp - 1; i++) PUT("0");
            PUT("%s", digits);
        }
    } else {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    }
#undef PUT
}

static void repr_str(jctx *c, jv v, jbuf *b)
{
    const char *s = v.s->p;
    int has_sq = memchr(s, '\'', v.s->len) != NULL, has_dq = memchr(s, '"', v.s->len) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    jb_put(c, b, &q, 1);
    for (size_t i = 0; i < v.s->len; i++) {
        unsigned char ch = (unsigned char)s[i];
        char tmp[8];
        if (ch == (unsigned char)q || ch == '\\') { tmp[0] = '\\'; tmp[1] = (char)ch; jb_put(c, b, tmp, 2); }
        else if (ch == '\n') jb_puts(c, b, "\\n");
        else if (ch == '\r') jb_puts(c, b, "\\r");
        else if (ch == '\t') jb_puts(c, b, "\\t");
        else if (ch < 0x20 || ch == 0x7F) { snprintf(tmp, sizeof tmp, "\\x%02x", ch); jb_puts(c, b, tmp); }
        else jb_put(c, b, (const char *)&s[i], 1);
    }
    jb_put(c, b, &q, 1);
}

static void repr(jctx *c, jv v, jbuf *b)
{
    if (v.t == JV_STRING) { repr_str(c, v, b); return; }
    if (v.t == JV_LIST) {
        jb_puts(c, b, v.l->is_tuple ? "(" : "[");
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) jb_puts(c, b, ", ");
            repr(c, v.l->v[i], b);
        }
        jb_puts(c, b, v.l->is_tuple ? (v.l->n == 1 ? ",)" : ")") : "]");
        return;
    }
    if (v.t == JV_DICT && !v.d->is_namespace) {
        jb_puts(c, b, "{");
        for (size_t i = 0; i < v.d->n; i++) {
            if (i) jb_puts(c, b, ", ");
            repr(c, v.d->k[i], b);
            jb_puts(c, b, ": ");
            repr(c, v.d->v[i], b);
        }
        jb_puts(c, b, "}");
        return;
    }
    jv_to_str(c, v, b);
}

void jv_to_str(jctx *c, jv v, jbuf *b)
{
    char tmp[64];
    switch (v.t) {
    case JV_UNDEFINED: return;
    case JV_NONE: jb_puts(c, b, "None"); return;
    case JV_BOOL: jb_puts(c, b, v.b ? "True" : "False"); return;
    case JV_INT: snprintf(tmp, sizeof tmp, "%lld", (long long)v.i); jb_puts(c, b, tmp); return;
    case JV_FLOAT: float_repr(v.f, tmp, sizeof tmp, 0); jb_puts(c, b, tmp); return;
    case JV_STRING: jb_put(c, b, v.s->p, v.s->len); return;
    case JV_LIST: repr(c, v, b); return;
    case JV_DICT:
        if (v.d->is_namespace) jb_puts(c, b, "<Namespace>");
        else repr(c, v, b);
        return;
    case JV_FUNC: jb_puts(c, b, "<function>"); return;
    }
}

jv jv_stringify(jctx *c, jv v)
{
    if (v.t == JV_STRING) return v;
    jbuf b = {0};
    jv_to_str(c, v, &b);
    return jv_str(c, b.p ? b.p : "", b.len);
}

static void json_str(jctx *c, const char *s, size_t n, jbuf *b)
{
    jb_puts(c, b, "\"");
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[8];
        if (ch == '"') esc = "\\\"";
        else if (ch == '\\') esc = "\\\\";
        else if (ch == '\n') esc = "\\n";
        else if (ch == '\r') esc = "\\r";
        else if (ch == '\t') esc = "\\t";
        else if (ch == '\b') esc = "\\b";
        else if (ch == '\f') esc = "\\f";
        else if (ch < 0x20) { snprintf(tmp, sizeof tmp, "\\u%04x", ch); esc = tmp; }
        if (!esc) continue;
        jb_put(c, b, s + run, i - run);
        jb_puts(c, b, esc);
        run = i + 1;
    }
    jb_put(c, b, s + run, n - run);
    jb_puts(c, b, "\"");
}

static void json_indent(jctx *c, jbuf *b, int indent, int depth)
{
    jb_puts(c, b, "\n");
    for (int i = 0; i < indent * depth; i++) jb_puts(c, b, " ");
}

static void to_json(jctx *c, jv v, int indent, int depth, jbuf *b)
{
    char tmp[64];
    switch (v.t) {
    case JV_NONE: jb_puts(c, b, "null"); return;
    case JV_BOOL: jb_puts(c, b, v.b ? "true" : "false"); return;
    case JV_INT: snprintf(tmp, sizeof tmp, "%lld", (long long)v.i); jb_puts(c, b, tmp); return;
    case JV_FLOAT: float_repr(v.f, tmp, sizeof tmp, 1); jb_puts(c, b, tmp); return;
    case JV_STRING: json_str(c, v.s->p, v.s->len, b); return;
    case JV_LIST:
        if (!v.l->n) { jb_puts(c, b, "[]"); return; }
        jb_puts(c, b, "[");
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) jb_puts(c, b, indent >= 0 ? "," : ", ");
            if (indent >= 0) json_indent(c, b, indent, depth + 1);
            to_json(c, v.l->v[i], indent, depth + 1, b);
        }
        if (indent >= 0) json_indent(c, b, indent, depth);
        jb_puts(c, b, "]");
        return;
    case JV_DICT:
        if (v.d->is_namespace) jerr(c, "tojson: a namespace is not JSON serializable");
        if (!v.d->n) { jb_puts(c, b, "{}"); return; }
        jb_puts(c, b, "{");
        for (size_t i = 0; i < v.d->n; i++) {
            if (i) jb_puts(c, b, indent >= 0 ? "," : ", ");
            if (indent >= 0) json_indent(c, b, indent, depth + 1);
            jv k = v.d->k[i];
            if (k.t == JV_STRING) json_str(c, k.s->p, k.s->len, b);
            else { jv ks = jv_stringify(c, k); json_str(c, ks.s->p, ks.s->len, b); }
            jb_puts(c, b, ": ");
            to_json(c, v.d->v[i], indent, depth + 1, b);
        }
        if (indent >= 0) json_indent(c, b, indent, depth);
        jb_puts(c, b, "}");
        return;
    case JV_UNDEFINED: jerr(c, "tojson: '%s' is undefined", v.undef_name ? v.undef_name : "value");
    case JV_FUNC: jerr(c, "tojson: a function is not JSON serializable");
    }
}

void jv_to_json(jctx *c, jv v, int indent, jbuf *b) { to_json(c, v, indent, 0, b); }

static jv from_cjson(jctx *c, const cJSON *j)
{
    if (cJSON_IsNull(j)) return jv_none();
    if (cJSON_IsBool(j)) return jv_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        /* cJSON keeps no int/float distinction: integral values within 2^53 are ints. */
        if (d == floor(d) && fabs(d) < 9007199254740992.0) return jv_int((int64_t)d);
        return jv_float(d);
    }
    if (cJSON_IsString(j)) return jv_cstr(c, j->valuestring);
    if (cJSON_IsArray(j)) {
        jv l = jv_list(c, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *e = j->child; e; e = e->next) jl_push(c, l, from_cjson(c, e));
        return l;
    }
    if (cJSON_IsObject(j)) {
        jv d = jv_dict(c, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *e = j->child; e; e = e->next) jd_set(c, d, jv_cstr(c, e->string), from_cjson(c, e));
        return d;
    }
    return jv_none();
}

jv jv_from_json_text(jctx *c, const char *json, const char *what)
{
    cJSON *j = cJSON_Parse(json);
    if (!j) jerr(c, "%s is not valid JSON (near \"%.20s\")", what, cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "");
    jv v = from_cjson(c, j); /* cannot longjmp past j except on out-of-memory */
    cJSON_Delete(j);
    return v;
}
