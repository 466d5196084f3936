/* Jinja's built-in filters, tests and global functions, and the Python string / dict / list methods
 * that chat templates call, with the semantics of jinja2 3.x and CPython. */
#include "core/jinja.h"
#include "core/unicode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#define ERR(c, ...) jerr(c, __VA_ARGS__)

static const char *FILTERS[] = {
    "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "format",
    "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim",
    "unique", "upper", "wordcount", NULL};

static const char *TESTS[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "even", "false", "float", "ge", ">=",
    "gt", "greaterthan", ">", "in", "integer", "iterable", "le", "<=", "lower", "lt", "lessthan", "<", "mapping",
    "ne", "!=", "none", "number", "odd", "sameas", "sequence", "string", "true", "undefined", "upper", NULL};

static const char *GLOBALS[] = {"range", "namespace", "raise_exception", "strftime_now", "dict", NULL};

static int in_list(const char *const *list, const char *name)
{
    for (int i = 0; list[i]; i++) if (!strcmp(list[i], name)) return 1;
    return 0;
}

int jinja_has_filter(const char *name) { return in_list(FILTERS, name); }
int jinja_has_test(const char *name) { return in_list(TESTS, name); }
int jinja_is_global(const char *name) { return in_list(GLOBALS, name); }

/* ---- helpers ---- */

static jv kwarg(const char *const *kw, const jv *kwv, int nkw, const char *name, const jv *args, int nargs, int pos, jv dflt)
{
    for (int i = 0; i < nkw; i++) if (!strcmp(kw[i], name)) return kwv[i];
    if (pos >= 0 && pos < nargs) return args[pos];
    return dflt;
}

static jv need_str(jctx *c, jv v, const char *what)
{
    if (v.t != JV_STRING) ERR(c, "%s expects a string, got %s", what, jv_type_name(v));
    return v;
}

static int is_py_space(uint32_t cp) { return uni_is_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F); }

static int in_chars(uint32_t cp, jv chars)
{
    if (chars.t != JV_STRING) return is_py_space(cp);
    size_t pos = 0;
    while (pos < chars.s->len) if (utf8_next(chars.s->p, &pos) == cp) return 1;
    return 0;
}

static jv strip(jctx *c, jv s, jv chars, int left, int right)
{
    size_t a = 0, b = s.s->len;
    if (left)
        while (a < b) {
            size_t p = a;
            if (!in_chars(utf8_next(s.s->p, &p), chars)) break;
            a = p;
        }
    if (right)
        while (b > a) {
            size_t p = b - 1;
            while (p > a && ((unsigned char)s.s->p[p] & 0xC0) == 0x80) p--;
            size_t q = p;
            if (!in_chars(utf8_next(s.s->p, &q), chars)) break;
            b = p;
        }
    return jv_str(c, s.s->p + a, b - a);
}

static jv map_case(jctx *c, jv s, int mode) /* 0 lower, 1 upper, 2 title, 3 capitalize */
{
    jbuf b = {0};
    jb_put(c, &b, "", 0);
    size_t pos = 0;
    int prev_cased = 0, first = 1;
    while (pos < s.s->len) {
        uint32_t cp = utf8_next(s.s->p, &pos);
        uint32_t o;
        if (mode == 0) o = (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
        else if (mode == 1) o = (uint32_t)utf8proc_toupper((utf8proc_int32_t)cp);
        else if (mode == 2) o = (uint32_t)(prev_cased ? utf8proc_tolower((utf8proc_int32_t)cp) : utf8proc_totitle((utf8proc_int32_t)cp));
        else o = (uint32_t)(first ? utf8proc_totitle((utf8proc_int32_t)cp) : utf8proc_tolower((utf8proc_int32_t)cp));
        prev_cased = uni_is_alnum(cp);
        first = 0;
        char enc[4];
        jb_put(c, &b, enc, utf8_encode(o, enc));
    }
    return jv_str(c, b.p, b.len);
}

static jv replace(jctx *c, jv s, jv old, jv new, int64_t count)
{
    need_str(c, old, "replace()");
    need_str(c, new, "replace()");
    jbuf b = {0};
    jb_put(c, &b, "", 0);
    size_t i = 0;
    int64_t done = 0;
    if (old.s->len == 0) {
        /* Python inserts new between every character (and at both ends) */
        for (;;) {
            if (count < 0 || done < count) { jb_put(c, &b, new.s->p, new.s->len); done++; }
            if (i >= s.s->len) break;
            size_t k = i + utf8_len((unsigned char)s.s->p[i]);
            jb_put(c, &b, s.s->p + i, k - i);
            i = k;
        }
        return jv_str(c, b.p, b.len);
    }
    while (i < s.s->len) {
        const char *hit = (count < 0 || done < count) ? memmem(s.s->p + i, s.s->len - i, old.s->p, old.s->len) : NULL;
        if (!hit) break;
        size_t at = (size_t)(hit - s.s->p);
        jb_put(c, &b, s.s->p + i, at - i);
        jb_put(c, &b, new.s->p, new.s->len);
        i = at + old.s->len;
        done++;
    }
    jb_put(c, &b, s.s->p + i, s.s->len - i);
    return jv_str(c, b.p, b.len);
}

static jv split(jctx *c, jv s, jv sep, int64_t maxsplit)
{
    jv out = jv_list(c, 4);
    const char *p = s.s->p;
    size_t n = s.s->len;
    if (sep.t == JV_NONE || sep.t == JV_UNDEFINED) {
        size_t i = 0;
        int64_t splits = 0;
        for (;;) {
            while (i < n) { size_t q = i; if (!is_py_space(utf8_next(p, &q))) break; i = q; }
            if (i >= n) break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                size_t e = n;
                while (e > i) {
                    size_t q = e - 1;
                    while (q > i && ((unsigned char)p[q] & 0xC0) == 0x80) q--;
                    size_t t = q;
                    if (!is_py_space(utf8_next(p, &t))) break;
                    e = q;
                }
                jl_push(c, out, jv_str(c, p + i, e - i));
                break;
            }
            size_t j = i;
            while (j < n) { size_t q = j; if (is_py_space(utf8_next(p, &q))) break; j = q; }
            jl_push(c, out, jv_str(c, p + i, j - i));
            splits++;
            i = j;
        }
        return out;
    }
    need_str(c, sep, "split()");
    if (sep.s->len == 0) ERR(c, "split(): empty separator");
    size_t i = 0;
    int64_t splits = 0;
    for (;;) {
        const char *hit = (maxsplit < 0 || splits < maxsplit) ? memmem(p + i, n - i, sep.s->p, sep.s->len) : NULL;
        if (!hit) { jl_push(c, out, jv_str(c, p + i, n - i)); break; }
        size_t at = (size_t)(hit - p);
        jl_push(c, out, jv_str(c, p + i, at - i));
        i = at + sep.s->len;
        splits++;
    }
    return out;
}

static jv join(jctx *c, jv items, jv sep, jv attribute)
{
    jbuf b = {0};
    jb_put(c, &b, "", 0);
    if (items.t == JV_UNDEFINED) return jv_str(c, "", 0);
    if (items.t != JV_LIST) ERR(c, "join expects a list, got %s", jv_type_name(items));
    for (size_t i = 0; i < items.l->n; i++) {
        if (i && sep.t == JV_STRING) jb_put(c, &b, sep.s->p, sep.s->len);
        jv v = items.l->v[i];
        if (attribute.t == JV_STRING) { jv a; v = jd_get_cstr(v, attribute.s->p, &a) ? a : jv_undef(attribute.s->p); }
        jv_to_str(c, v, &b);
    }
    return jv_str(c, b.p, b.len);
}

static int64_t length(jctx *c, jv v)
{
    switch (v.t) {
    case JV_STRING: { size_t n = 0; for (size_t i = 0; i < v.s->len; i++) n += ((unsigned char)v.s->p[i] & 0xC0) != 0x80; return (int64_t)n; }
    case JV_LIST: return (int64_t)v.l->n;
    case JV_DICT: return (int64_t)v.d->n;
    case JV_UNDEFINED: return 0;
    default: ERR(c, "object of type %s has no length", jv_type_name(v));
    }
}

static jv to_list(jctx *c, jv v)
{
    if (v.t == JV_LIST) return v;
    jv out = jv_list(c, 4);
    if (v.t == JV_UNDEFINED) return out;
    if (v.t == JV_DICT) { for (size_t i = 0; i < v.d->n; i++) jl_push(c, out, v.d->k[i]); return out; }
    if (v.t == JV_STRING) {
        for (size_t i = 0; i < v.s->len;) {
            size_t k = i + utf8_len((unsigned char)v.s->p[i]);
            jl_push(c, out, jv_str(c, v.s->p + i, k - i));
            i = k;
        }
        return out;
    }
    ERR(c, "%s is not iterable", jv_type_name(v));
}

static jv items_of(jctx *c, jv d)
{
    jv out = jv_list(c, 4);
    if (d.t == JV_UNDEFINED) return out;
    if (d.t != JV_DICT || d.d->is_namespace) ERR(c, "items() expects a mapping, got %s", jv_type_name(d));
    for (size_t i = 0; i < d.d->n; i++) {
        jv pair = jv_list(c, 2);
        pair.l->is_tuple = 1;
        jl_push(c, pair, d.d->k[i]);
        jl_push(c, pair, d.d->v[i]);
        jl_push(c, out, pair);
    }
    return out;
}

static int cmp_values(jctx *c, jv a, jv b, int case_sensitive)
{
    if ((a.t == JV_INT || a.t == JV_FLOAT || a.t == JV_BOOL) && (b.t == JV_INT || b.t == JV_FLOAT || b.t == JV_BOOL)) {
        double x = a.t == JV_FLOAT ? a.f : a.t == JV_INT ? (double)a.i : a.b;
        double y = b.t == JV_FLOAT ? b.f : b.t == JV_INT ? (double)b.i : b.b;
        return x < y ? -1 : x > y;
    }
    if (a.t == JV_STRING && b.t == JV_STRING) {
        if (!case_sensitive) { a = map_case(c, a, 0); b = map_case(c, b, 0); }
        size_t n = a.s->len < b.s->len ? a.s->len : b.s->len;
        int r = memcmp(a.s->p, b.s->p, n);
        return r ? r : (a.s->len < b.s->len ? -1 : a.s->len > b.s->len);
    }
    if (a.t == JV_LIST && b.t == JV_LIST) {
        for (size_t i = 0; i < a.l->n && i < b.l->n; i++) {
            int r = cmp_values(c, a.l->v[i], b.l->v[i], case_sensitive);
            if (r) return r;
        }
        return a.l->n < b.l->n ? -1 : a.l->n > b.l->n;
    }
    ERR(c, "cannot compare %s with %s", jv_type_name(a), jv_type_name(b));
}

static jv attr_of(jv v, jv attribute)
{
    if (attribute.t != JV_STRING) return v;
    jv out;
    /* dotted paths: "a.b" */
    const char *p = attribute.s->p;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char key[256];
        if (n >= sizeof key) return jv_undef(attribute.s->p);
        memcpy(key, p, n);
        key[n] = 0;
        if (!jd_get_cstr(v, key, &out)) return jv_undef(attribute.s->p);
        v = out;
        p += n + (dot != NULL);
    }
    return v;
}

static jv sorted(jctx *c, jv list, int reverse, int case_sensitive, jv attribute)
{
    list = to_list(c, list);
    jv out = jv_list(c, list.l->n);
    for (size_t i = 0; i < list.l->n; i++) jl_push(c, out, list.l->v[i]);
    /* insertion sort: stable, and lists in templates are short */
    for (size_t i = 1; i < out.l->n; i++) {
        jv x = out.l->v[i];
        size_t j = i;
        while (j > 0) {
            int r = cmp_values(c, attr_of(out.l->v[j - 1], attribute), attr_of(x, attribute), case_sensitive);
            if (reverse ? r >= 0 : r <= 0) break;
            out.l->v[j] = out.l->v[j - 1];
            j--;
        }
        out.l->v[j] = x;
    }
    return out;
}

static jv format_percent(jctx *c, jv fmt, const jv *args, int nargs)
{
    jbuf b = {0};
    jb_put(c, &b, "", 0);
    int k = 0;
    for (size_t i = 0; i < fmt.s->len; i++) {
        char ch = fmt.s->p[i];
        if (ch != '%') { jb_put(c, &b, &ch, 1); continue; }
        if (++i >= fmt.s->len) ERR(c, "incomplete format");
        char spec = fmt.s->p[i];
        if (spec == '%') { jb_put(c, &b, "%", 1); continue; }
        if (k >= nargs) ERR(c, "not enough arguments for format string");
        jv a = args[k++];
        char tmp[64];
        if (spec == 's') jv_to_str(c, a, &b);
        else if (spec == 'r') jv_to_str(c, a, &b);
        else if (spec == 'd' || spec == 'i') {
            if (a.t != JV_INT && a.t != JV_FLOAT && a.t != JV_BOOL) ERR(c, "%%d format: a number is required, not %s", jv_type_name(a));
            snprintf(tmp, sizeof tmp, "%lld", (long long)(a.t == JV_FLOAT ? (int64_t)a.f : a.t == JV_INT ? a.i : a.b));
            jb_puts(c, &b, tmp);
        } else ERR(c, "unsupported format character '%c'", spec);
    }
    return jv_str(c, b.p, b.len);
}

/* "{} {name}".format(...) */
static jv format_braces(jctx *c, jv fmt, const jv *args, int nargs, const char *const *kw, const jv *kwv, int nkw)
{
    jbuf b = {0};
    jb_put(c, &b, "", 0);
    int auto_idx = 0;
    for (size_t i = 0; i < fmt.s->len; i++) {
        char ch = fmt.s->p[i];
        if (ch == '{' && i + 1 < fmt.s->len && fmt.s->p[i + 1] == '{') { jb_put(c, &b, "{", 1); i++; continue; }
        if (ch == '}' && i + 1 < fmt.s->len && fmt.s->p[i + 1] == '}') { jb_put(c, &b, "}", 1); i++; continue; }
        if (ch != '{') { jb_put(c, &b, &ch, 1); continue; }
        const char *end = memchr(fmt.s->p + i, '}', fmt.s->len - i);
        if (!end) ERR(c, "format(): unmatched '{'");
        size_t n = (size_t)(end - (fmt.s->p + i + 1));
        char field[128];
        if (n >= sizeof field) ERR(c, "format(): field too long");
        memcpy(field, fmt.s->p + i + 1, n);
        field[n] = 0;
        if (strchr(field, ':') || strchr(field, '!')) ERR(c, "format(): format specs are not supported");
        jv v = jv_undef(field);
        if (!n) { if (auto_idx >= nargs) ERR(c, "format(): not enough arguments"); v = args[auto_idx++]; }
        else if (field[0] >= '0' && field[0] <= '9') { int k = atoi(field); if (k >= nargs) ERR(c, "format(): index out of range"); v = args[k]; }
        else { int found = 0; for (int k = 0; k < nkw; k++) if (!strcmp(kw[k], field)) { v = kwv[k]; found = 1; } if (!found) ERR(c, "format(): no argument '%s'", field); }
        jv_to_str(c, v, &b);
        i += n + 1;
    }
    return jv_str(c, b.p, b.len);
}

/* ---- filters ---- */

static jv select_like(jctx *c, jv seq, const jv *args, int nargs, int by_attr, int keep)
{
    seq = to_list(c, seq);
    jv out = jv_list(c, seq.l->n);
    int a0 = by_attr ? 1 : 0;
    if (by_attr && (nargs < 1 || args[0].t != JV_STRING)) ERR(c, "selectattr/rejectattr need an attribute name");
    const char *test = nargs > a0 ? (args[a0].t == JV_STRING ? args[a0].s->p : NULL) : NULL;
    if (nargs > a0 && !test) ERR(c, "select: the test name must be a string");
    if (test && !jinja_has_test(test)) ERR(c, "no test named '%s'", test);
    for (size_t i = 0; i < seq.l->n; i++) {
        jv v = by_attr ? attr_of(seq.l->v[i], args[0]) : seq.l->v[i];
        int t = test ? jinja_test(c, test, v, args + a0 + 1, nargs - a0 - 1) : jv_truthy(v);
        if (t == keep) jl_push(c, out, seq.l->v[i]);
    }
    return out;
}

jv jinja_filter(jctx *c, const char *name, jv v, const jv *args, int nargs, const char *const *kw, const jv *kwv, int nkw)
{
#define ARG(nm, pos, dflt) kwarg(kw, kwv, nkw, nm, args, nargs, pos, dflt)
    switch (name[0]) {
    case 'a':
        if (!strcmp(name, "abs")) {
            if (v.t == JV_INT) return jv_int(v.i < 0 ? -v.i : v.i);
            if (v.t == JV_FLOAT) return jv_float(fabs(v.f));
            ERR(c, "abs: a number is required, not %s", jv_type_name(v));
        }
        if (!strcmp(name, "attr")) return attr_of(v, ARG("name", 0, jv_none()));
        break;
    case 'c':
        if (!strcmp(name, "capitalize")) return map_case(c, jv_stringify(c, v), 3);
        if (!strcmp(name, "count")) return jv_int(length(c, v));
        break;
    case 'd':
        if (!strcmp(name, "d") || !strcmp(name, "default")) {
            jv dflt = ARG("default_value", 0, jv_str(c, "", 0));
            int boolean = jv_truthy(ARG("boolean", 1, jv_bool(0)));
            if (v.t == JV_UNDEFINED || (boolean && !jv_truthy(v))) return dflt;
            return v;
        }
        if (!strcmp(name, "dictsort")) {
            jv it = items_of(c, v);
            int cs = jv_truthy(ARG("case_sensitive", 0, jv_bool(0)));
            jv by = ARG("by", 1, jv_cstr(c, "key"));
            int rev = jv_truthy(ARG("reverse", 2, jv_bool(0)));
            int by_value = by.t == JV_STRING && !strcmp(by.s->p, "value");
            for (size_t i = 0; by_value && i < it.l->n; i++) { jv *p = it.l->v[i].l->v; jv t = p[0]; p[0] = p[1]; p[1] = t; }
            jv out = sorted(c, it, rev, cs, jv_none());
            for (size_t i = 0; by_value && i < out.l->n; i++) { jv *p = out.l->v[i].l->v; jv t = p[0]; p[0] = p[1]; p[1] = t; }
            return out;
        }
        break;
    case 'e':
        if (!strcmp(name, "e") || !strcmp(name, "escape")) {
            jv s = jv_stringify(c, v);
            jbuf b = {0};
            jb_put(c, &b, "", 0);
            for (size_t i = 0; i < s.s->len; i++) {
                char ch = s.s->p[i];
                const char *rep = ch == '&' ? "&amp;" : ch == '<' ? "&lt;" : ch == '>' ? "&gt;" : ch == '"' ? "&#34;" : ch == '\'' ? "&#39;" : NULL;
                if (rep) jb_puts(c, &b, rep);
                else jb_put(c, &b, &ch, 1);
            }
            return jv_str(c, b.p, b.len);
        }
        break;
    case 'f':
        if (!strcmp(name, "first")) {
            jv l = to_list(c, v);
            return l.l->n ? l.l->v[0] : jv_undef("first");
        }
        if (!strcmp(name, "float")) {
            if (v.t == JV_FLOAT) return v;
            if (v.t == JV_INT || v.t == JV_BOOL) return jv_float(v.t == JV_INT ? (double)v.i : v.b);
            if (v.t == JV_STRING) { char *end; double d = strtod(v.s->p, &end); if (end != v.s->p) return jv_float(d); }
            return ARG("default", 0, jv_float(0));
        }
        if (!strcmp(name, "format")) return format_percent(c, need_str(c, v, "format"), args, nargs);
        break;
    case 'i':
        if (!strcmp(name, "int")) {
            if (v.t == JV_INT) return v;
            if (v.t == JV_BOOL) return jv_int(v.b);
            if (v.t == JV_FLOAT) return jv_int((int64_t)v.f);
            if (v.t == JV_STRING) {
                char *end;
                long long x = strtoll(v.s->p, &end, (int)(ARG("base", 1, jv_int(10)).t == JV_INT ? ARG("base", 1, jv_int(10)).i : 10));
                if (end != v.s->p) return jv_int(x);
                double d = strtod(v.s->p, &end);
                if (end != v.s->p) return jv_int((int64_t)d);
            }
            return ARG("default", 0, jv_int(0));
        }
        if (!strcmp(name, "items")) return items_of(c, v);
        if (!strcmp(name, "indent")) {
            jv s = jv_stringify(c, v);
            jv w = ARG("width", 0, jv_int(4));
            int first = jv_truthy(ARG("first", 1, jv_bool(0))), blank = jv_truthy(ARG("blank", 2, jv_bool(0)));
            jbuf pad = {0};
            jb_put(c, &pad, "", 0);
            if (w.t == JV_STRING) jb_put(c, &pad, w.s->p, w.s->len);
            else for (int64_t i = 0; i < (w.t == JV_INT ? w.i : 4); i++) jb_put(c, &pad, " ", 1);
            jbuf b = {0};
            jb_put(c, &b, "", 0);
            size_t i = 0;
            int line = 0;
            while (i <= s.s->len) {
                const char *nl = memchr(s.s->p + i, '\n', s.s->len - i);
                size_t e = nl ? (size_t)(nl - s.s->p) : s.s->len;
                int empty = e == i;
                if ((line > 0 || first) && (blank || !empty)) jb_put(c, &b, pad.p, pad.len);
                jb_put(c, &b, s.s->p + i, e - i);
                if (!nl) break;
                jb_put(c, &b, "\n", 1);
                i = e + 1;
                line++;
            }
            return jv_str(c, b.p, b.len);
        }
        break;
    case 'j':
        if (!strcmp(name, "join")) return join(c, v, ARG("d", 0, jv_str(c, "", 0)), ARG("attribute", 1, jv_none()));
        break;
    case 'l':
        if (!strcmp(name, "last")) {
            jv l = to_list(c, v);
            return l.l->n ? l.l->v[l.l->n - 1] : jv_undef("last");
        }
        if (!strcmp(name, "length")) return jv_int(length(c, v));
        if (!strcmp(name, "list")) {
            jv l = to_list(c, v), out = jv_list(c, l.l->n);
            for (size_t i = 0; i < l.l->n; i++) jl_push(c, out, l.l->v[i]);
            return out;
        }
        if (!strcmp(name, "lower")) return map_case(c, jv_stringify(c, v), 0);
        break;
    case 'm':
        if (!strcmp(name, "map")) {
            jv l = to_list(c, v), out = jv_list(c, l.l->n);
            jv attribute = ARG("attribute", -1, jv_none());
            if (attribute.t == JV_STRING) {
                jv dflt = ARG("default", -1, jv_undef(attribute.s->p));
                for (size_t i = 0; i < l.l->n; i++) {
                    jv a = attr_of(l.l->v[i], attribute);
                    jl_push(c, out, a.t == JV_UNDEFINED ? dflt : a);
                }
                return out;
            }
            if (nargs < 1 || args[0].t != JV_STRING) ERR(c, "map needs a filter name or attribute=");
            if (!jinja_has_filter(args[0].s->p)) ERR(c, "no filter named '%s'", args[0].s->p);
            for (size_t i = 0; i < l.l->n; i++)
                jl_push(c, out, jinja_filter(c, args[0].s->p, l.l->v[i], args + 1, nargs - 1, NULL, NULL, 0));
            return out;
        }
        if (!strcmp(name, "max") || !strcmp(name, "min")) {
            jv l = sorted(c, v, name[1] == 'a', jv_truthy(ARG("case_sensitive", 0, jv_bool(0))), ARG("attribute", 1, jv_none()));
            return l.l->n ? l.l->v[0] : jv_undef(name);
        }
        break;
    case 'r':
        if (!strcmp(name, "reject")) return select_like(c, v, args, nargs, 0, 0);
        if (!strcmp(name, "rejectattr")) return select_like(c, v, args, nargs, 1, 0);
        if (!strcmp(name, "replace")) {
            jv cnt = ARG("count", 2, jv_none());
            return replace(c, jv_stringify(c, v), ARG("old", 0, jv_undef("old")), ARG("new", 1, jv_undef("new")), cnt.t == JV_INT ? cnt.i : -1);
        }
        if (!strcmp(name, "reverse")) {
            if (v.t == JV_STRING) {
                jbuf b = {0};
                jb_put(c, &b, "", 0);
                size_t e = v.s->len;
                while (e > 0) {
                    size_t s = e - 1;
                    while (s > 0 && ((unsigned char)v.s->p[s] & 0xC0) == 0x80) s--;
                    jb_put(c, &b, v.s->p + s, e - s);
                    e = s;
                }
                return jv_str(c, b.p, b.len);
            }
            jv l = to_list(c, v), out = jv_list(c, l.l->n);
            for (size_t i = l.l->n; i-- > 0;) jl_push(c, out, l.l->v[i]);
            return out;
        }
        if (!strcmp(name, "round")) {
            jv prec = ARG("precision", 0, jv_int(0)), method = ARG("method", 1, jv_cstr(c, "common"));
            double x = v.t == JV_FLOAT ? v.f : v.t == JV_INT ? (double)v.i : 0, m = pow(10, (double)(prec.t == JV_INT ? prec.i : 0));
            const char *md = method.t == JV_STRING ? method.s->p : "common";
            double y = !strcmp(md, "floor") ? floor(x * m) / m : !strcmp(md, "ceil") ? ceil(x * m) / m : round(x * m) / m;
            return jv_float(y);
        }
        break;
    case 's':
        if (!strcmp(name, "safe")) return v;
        if (!strcmp(name, "select")) return select_like(c, v, args, nargs, 0, 1);
        if (!strcmp(name, "selectattr")) return select_like(c, v, args, nargs, 1, 1);
        if (!strcmp(name, "sort"))
            return sorted(c, v, jv_truthy(ARG("reverse", 0, jv_bool(0))), jv_truthy(ARG("case_sensitive", 1, jv_bool(0))), ARG("attribute", 2, jv_none()));
        if (!strcmp(name, "string")) return jv_stringify(c, v);
        if (!strcmp(name, "sum")) {
            jv l = to_list(c, v), attribute = ARG("attribute", 0, jv_none()), total = ARG("start", 1, jv_int(0));
            for (size_t i = 0; i < l.l->n; i++) {
                jv x = attr_of(l.l->v[i], attribute);
                if (total.t == JV_INT && x.t == JV_INT) total = jv_int(total.i + x.i);
                else if ((total.t == JV_INT || total.t == JV_FLOAT) && (x.t == JV_INT || x.t == JV_FLOAT))
                    total = jv_float((total.t == JV_FLOAT ? total.f : (double)total.i) + (x.t == JV_FLOAT ? x.f : (double)x.i));
                else ERR(c, "sum: cannot add %s", jv_type_name(x));
            }
            return total;
        }
        break;
    case 't':
        if (!strcmp(name, "title")) return map_case(c, jv_stringify(c, v), 2);
        if (!strcmp(name, "tojson")) {
            jv ind = ARG("indent", 0, jv_none());
            jbuf b = {0};
            jb_put(c, &b, "", 0);
            jv_to_json(c, v, ind.t == JV_INT ? (int)ind.i : -1, &b);
            return jv_str(c, b.p, b.len);
        }
        if (!strcmp(name, "trim")) return strip(c, jv_stringify(c, v), ARG("chars", 0, jv_none()), 1, 1);
        break;
    case 'u':
        if (!strcmp(name, "upper")) return map_case(c, jv_stringify(c, v), 1);
        if (!strcmp(name, "unique")) {
            jv l = to_list(c, v), out = jv_list(c, l.l->n);
            for (size_t i = 0; i < l.l->n; i++) {
                int seen = 0;
                for (size_t k = 0; k < out.l->n && !seen; k++) seen = jv_equal(out.l->v[k], l.l->v[i]);
                if (!seen) jl_push(c, out, l.l->v[i]);
            }
            return out;
        }
        break;
    case 'w':
        if (!strcmp(name, "wordcount")) return jv_int((int64_t)split(c, jv_stringify(c, v), jv_none(), -1).l->n);
        break;
    }
#undef ARG
    ERR(c, "no filter named '%s'", name);
}

/* ---- tests ---- */

int jinja_test(jctx *c, const char *name, jv v, const jv *args, int nargs)
{
    jv a = nargs > 0 ? args[0] : jv_undef("argument");
    if (!strcmp(name, "defined")) return v.t != JV_UNDEFINED;
    if (!strcmp(name, "undefined")) return v.t == JV_UNDEFINED;
    if (!strcmp(name, "none")) return v.t == JV_NONE;
    if (!strcmp(name, "boolean")) return v.t == JV_BOOL;
    if (!strcmp(name, "true")) return v.t == JV_BOOL && v.b;
    if (!strcmp(name, "false")) return v.t == JV_BOOL && !v.b;
    if (!strcmp(name, "string")) return v.t == JV_STRING;
    if (!strcmp(name, "number")) return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
    if (!strcmp(name, "integer")) return v.t == JV_INT;
    if (!strcmp(name, "float")) return v.t == JV_FLOAT;
    if (!strcmp(name, "mapping")) return v.t == JV_DICT && !v.d->is_namespace;
    if (!strcmp(name, "sequence")) return v.t == JV_LIST || v.t == JV_STRING || (v.t == JV_DICT && !v.d->is_namespace);
    if (!strcmp(name, "iterable")) return v.t == JV_LIST || v.t == JV_STRING || (v.t == JV_DICT && !v.d->is_namespace);
    if (!strcmp(name, "callable")) return v.t == JV_FUNC;
    if (!strcmp(name, "lower")) return v.t == JV_STRING && jv_equal(v, map_case(c, v, 0));
    if (!strcmp(name, "upper")) return v.t == JV_STRING && jv_equal(v, map_case(c, v, 1));
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (v.t != JV_INT) ERR(c, "test '%s' needs an integer, not %s", name, jv_type_name(v));
        return (v.i % 2 != 0) == (name[0] == 'o');
    }
    if (!strcmp(name, "divisibleby")) {
        if (v.t != JV_INT || a.t != JV_INT || a.i == 0) ERR(c, "divisibleby needs non-zero integers");
        return v.i % a.i == 0;
    }
    if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) return jv_equal(v, a);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !jv_equal(v, a);
    if (!strcmp(name, "sameas")) {
        if (v.t != a.t) return 0;
        if (v.t == JV_NONE || v.t == JV_UNDEFINED) return 1;
        if (v.t == JV_BOOL) return v.b == a.b;
        if (v.t == JV_LIST) return v.l == a.l;
        if (v.t == JV_DICT) return v.d == a.d;
        return jv_equal(v, a);
    }
    if (!strcmp(name, "in")) {
        if (a.t == JV_STRING && v.t == JV_STRING) return memmem(a.s->p, a.s->len, v.s->p, v.s->len) != NULL || !v.s->len;
        if (a.t == JV_LIST) { for (size_t i = 0; i < a.l->n; i++) if (jv_equal(v, a.l->v[i])) return 1; return 0; }
        if (a.t == JV_DICT) { jv t; return jd_get(a, v, &t); }
        ERR(c, "test 'in' needs a container");
    }
    int r;
    const char *lt[] = {"lt", "lessthan", "<"}, *le[] = {"le", "<="}, *gt[] = {"gt", "greaterthan", ">"}, *ge[] = {"ge", ">="};
    for (int i = 0; i < 3; i++) if (!strcmp(name, lt[i])) { r = cmp_values(c, v, a, 1); return r < 0; }
    for (int i = 0; i < 2; i++) if (!strcmp(name, le[i])) { r = cmp_values(c, v, a, 1); return r <= 0; }
    for (int i = 0; i < 3; i++) if (!strcmp(name, gt[i])) { r = cmp_values(c, v, a, 1); return r > 0; }
    for (int i = 0; i < 2; i++) if (!strcmp(name, ge[i])) { r = cmp_values(c, v, a, 1); return r >= 0; }
    ERR(c, "no test named '%s'", name);
}

/* ---- methods ---- */

static int64_t find(jv s, jv sub, int reverse)
{
    if (sub.t != JV_STRING || sub.s->len > s.s->len) return -1;
    const char *hit = NULL;
    if (!reverse) hit = memmem(s.s->p, s.s->len, sub.s->p, sub.s->len);
    else
        for (size_t i = s.s->len - sub.s->len + 1; i-- > 0;)
            if (!memcmp(s.s->p + i, sub.s->p, sub.s->len)) { hit = s.s->p + i; break; }
    if (!hit) return -1;
    int64_t cps = 0;
    for (const char *p = s.s->p; p < hit; p++) cps += ((unsigned char)*p & 0xC0) != 0x80;
    return cps;
}

static int affix(jctx *c, jv s, jv x, int suffix)
{
    if (x.t == JV_LIST) {
        for (size_t i = 0; i < x.l->n; i++) if (affix(c, s, x.l->v[i], suffix)) return 1;
        return 0;
    }
    need_str(c, x, suffix ? "endswith()" : "startswith()");
    if (x.s->len > s.s->len) return 0;
    return !memcmp(s.s->p + (suffix ? s.s->len - x.s->len : 0), x.s->p, x.s->len);
}

static int all_chars(jv s, int (*pred)(uint32_t))
{
    if (!s.s->len) return 0;
    size_t pos = 0;
    while (pos < s.s->len) if (!pred(utf8_next(s.s->p, &pos))) return 0;
    return 1;
}
static int p_digit(uint32_t cp) { return utf8proc_category((utf8proc_int32_t)cp) == UTF8PROC_CATEGORY_ND; }
static int p_alpha(uint32_t cp) { utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)cp); return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO; }
static int p_space(uint32_t cp) { return is_py_space(cp); }
static int p_alnum(uint32_t cp) { return uni_is_alnum(cp); }

int jinja_method(jctx *c, jv obj, const char *name, const jv *args, int nargs, const char *const *kw, const jv *kwv,
                 int nkw, jv *out)
{
#define ARG(nm, pos, dflt) kwarg(kw, kwv, nkw, nm, args, nargs, pos, dflt)
    if (obj.t == JV_STRING) {
        if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
            if (nargs < 1) ERR(c, "%s() takes a prefix", name);
            *out = jv_bool(affix(c, obj, args[0], name[0] == 'e'));
            return 1;
        }
        if (!strcmp(name, "strip")) { *out = strip(c, obj, ARG("chars", 0, jv_none()), 1, 1); return 1; }
        if (!strcmp(name, "lstrip")) { *out = strip(c, obj, ARG("chars", 0, jv_none()), 1, 0); return 1; }
        if (!strcmp(name, "rstrip")) { *out = strip(c, obj, ARG("chars", 0, jv_none()), 0, 1); return 1; }
        if (!strcmp(name, "split")) {
            jv m = ARG("maxsplit", 1, jv_int(-1));
            *out = split(c, obj, ARG("sep", 0, jv_none()), m.t == JV_INT ? m.i : -1);
            return 1;
        }
        if (!strcmp(name, "replace")) {
            jv cnt = ARG("count", 2, jv_int(-1));
            if (nargs < 2) ERR(c, "replace() takes old and new");
            *out = replace(c, obj, args[0], args[1], cnt.t == JV_INT ? cnt.i : -1);
            return 1;
        }
        if (!strcmp(name, "lower")) { *out = map_case(c, obj, 0); return 1; }
        if (!strcmp(name, "upper")) { *out = map_case(c, obj, 1); return 1; }
        if (!strcmp(name, "title")) { *out = map_case(c, obj, 2); return 1; }
        if (!strcmp(name, "capitalize")) { *out = map_case(c, obj, 3); return 1; }
        if (!strcmp(name, "find") || !strcmp(name, "rfind")) { *out = jv_int(find(obj, ARG("sub", 0, jv_none()), name[0] == 'r')); return 1; }
        if (!strcmp(name, "count")) {
            jv sub = need_str(c, ARG("sub", 0, jv_none()), "count()");
            int64_t n = 0;
            if (!sub.s->len) n = (int64_t)length(c, obj) + 1;
            else for (const char *p = obj.s->p; (p = memmem(p, obj.s->len - (size_t)(p - obj.s->p), sub.s->p, sub.s->len)); p += sub.s->len) n++;
            *out = jv_int(n);
            return 1;
        }
        if (!strcmp(name, "join")) { *out = join(c, to_list(c, ARG("iterable", 0, jv_list(c, 1))), obj, jv_none()); return 1; }
        if (!strcmp(name, "format")) { *out = format_braces(c, obj, args, nargs, kw, kwv, nkw); return 1; }
        if (!strcmp(name, "__mod__")) { *out = format_percent(c, obj, args, nargs); return 1; }
        if (!strcmp(name, "isdigit")) { *out = jv_bool(all_chars(obj, p_digit)); return 1; }
        if (!strcmp(name, "isalpha")) { *out = jv_bool(all_chars(obj, p_alpha)); return 1; }
        if (!strcmp(name, "isspace")) { *out = jv_bool(all_chars(obj, p_space)); return 1; }
        if (!strcmp(name, "isalnum")) { *out = jv_bool(all_chars(obj, p_alnum)); return 1; }
        if (!strcmp(name, "islower")) { *out = jv_bool(jv_equal(obj, map_case(c, obj, 0)) && !jv_equal(obj, map_case(c, obj, 1))); return 1; }
        if (!strcmp(name, "isupper")) { *out = jv_bool(jv_equal(obj, map_case(c, obj, 1)) && !jv_equal(obj, map_case(c, obj, 0))); return 1; }
        if (!strcmp(name, "splitlines")) {
            jv l = split(c, obj, jv_cstr(c, "\n"), -1);
            if (l.l->n && l.l->v[l.l->n - 1].s->len == 0) l.l->n--;
            *out = l;
            return 1;
        }
        return 0;
    }
    if (obj.t == JV_DICT && !obj.d->is_namespace) {
        if (obj.d->is_loop && !strcmp(name, "cycle")) {
            jv idx;
            jd_get_cstr(obj, "index0", &idx);
            if (nargs < 1) ERR(c, "loop.cycle() needs at least one value");
            *out = args[idx.i % nargs];
            return 1;
        }
        if (!strcmp(name, "items")) { *out = items_of(c, obj); return 1; }
        if (!strcmp(name, "keys") || !strcmp(name, "values")) {
            jv l = jv_list(c, obj.d->n);
            for (size_t i = 0; i < obj.d->n; i++) jl_push(c, l, name[0] == 'k' ? obj.d->k[i] : obj.d->v[i]);
            *out = l;
            return 1;
        }
        if (!strcmp(name, "get")) {
            if (nargs < 1) ERR(c, "get() takes a key");
            jv v;
            *out = jd_get(obj, args[0], &v) ? v : (nargs > 1 ? args[1] : jv_none());
            return 1;
        }
    }
    if (obj.t == JV_LIST) {
        if (!strcmp(name, "index")) {
            for (size_t i = 0; i < obj.l->n; i++) if (nargs && jv_equal(obj.l->v[i], args[0])) { *out = jv_int((int64_t)i); return 1; }
            ERR(c, "list.index(x): x not in list");
        }
        if (!strcmp(name, "count")) {
            int64_t n = 0;
            for (size_t i = 0; i < obj.l->n; i++) n += nargs && jv_equal(obj.l->v[i], args[0]);
            *out = jv_int(n);
            return 1;
        }
    }
    if ((obj.t == JV_LIST || obj.t == JV_DICT) &&
        (!strcmp(name, "append") || !strcmp(name, "pop") || !strcmp(name, "insert") || !strcmp(name, "extend") ||
         !strcmp(name, "update") || !strcmp(name, "clear") || !strcmp(name, "remove")))
        ERR(c, "%s.%s(): templates may not modify values (immutable sandbox)", jv_type_name(obj), name);
    return 0;
#undef ARG
}

/* ---- globals ---- */

jv jinja_global_call(jctx *c, const char *name, const jv *args, int nargs, const char *const *kw, const jv *kwv, int nkw)
{
    if (!strcmp(name, "raise_exception")) {
        jv msg = nargs ? jv_stringify(c, args[0]) : jv_cstr(c, "raise_exception() called");
        ERR(c, "raised: %s", msg.s->p);
    }
    if (!strcmp(name, "range")) {
        int64_t a = 0, b, step = 1;
        for (int i = 0; i < nargs; i++) if (args[i].t != JV_INT) ERR(c, "range() takes integers");
        if (nargs == 1) b = args[0].i;
        else if (nargs >= 2) { a = args[0].i; b = args[1].i; if (nargs > 2) step = args[2].i; }
        else ERR(c, "range() takes 1 to 3 arguments");
        if (step == 0) ERR(c, "range() step must not be zero");
        /* in unsigned arithmetic: the span of two int64 fits in a uint64 */
        uint64_t span = step > 0 ? (b > a ? (uint64_t)b - (uint64_t)a : 0) : (a > b ? (uint64_t)a - (uint64_t)b : 0);
        uint64_t ustep = step > 0 ? (uint64_t)step : 0 - (uint64_t)step;
        uint64_t ucount = span ? (span - 1) / ustep + 1 : 0;
        int64_t count = ucount > 1000000 ? 1000001 : (int64_t)ucount;
        if (count > 1000000) ERR(c, "range() of %lld items is too long for a template", (long long)count);
        jv l = jv_list(c, (size_t)count + 1);
        for (int64_t i = 0; i < count; i++) jl_push(c, l, jv_int(a + i * step));
        return l;
    }
    if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
        jv d = jv_dict(c, (size_t)nkw + 4);
        d.d->is_namespace = name[0] == 'n';
        for (int i = 0; i < nargs; i++) {
            if (args[i].t != JV_DICT) ERR(c, "%s() takes keyword arguments or a mapping", name);
            for (size_t k = 0; k < args[i].d->n; k++) jd_set(c, d, args[i].d->k[k], args[i].d->v[k]);
        }
        for (int i = 0; i < nkw; i++) jd_set(c, d, jv_cstr(c, kw[i]), kwv[i]);
        return d;
    }
    if (!strcmp(name, "strftime_now")) {
        if (nargs < 1 || args[0].t != JV_STRING) ERR(c, "strftime_now() takes a format string");
        char buf[256];
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(buf, sizeof buf, args[0].s->p, &tm);
        return jv_str(c, buf, n);
    }
    ERR(c, "'%s' is not callable", name);
}
