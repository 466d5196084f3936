/* Evaluating a parsed Jinja template: scopes, expressions with Python semantics, statements, and the
 * render entry point. */
#include "core/jinja_ast.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct frame {
    const char **names;
    jv *vals;
    int n, cap;
    struct frame *parent;
} frame;

typedef struct render {
    jctx c;
    jbuf out;
    frame *globals, *scope;
    int brk, cont;
    jv filter_input;
    jinja_span *spans;
    size_t n_spans, cap_spans;
    int depth;
} render;

#define R_ERR(r, ...) jerr(&(r)->c, __VA_ARGS__)

static void *ralloc(render *r, size_t n)
{
    void *p = ja_alloc(r->c.arena, n);
    if (!p) R_ERR(r, "out of memory");
    return p;
}

/* ---- scopes ---- */

static frame *new_frame(render *r, frame *parent)
{
    frame *f = ralloc(r, sizeof *f);
    f->parent = parent;
    return f;
}

static void frame_set(render *r, frame *f, const char *name, jv v)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->names[i], name)) { f->vals[i] = v; return; }
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 8;
        const char **nm = ralloc(r, (size_t)cap * sizeof *nm);
        jv *vals = ralloc(r, (size_t)cap * sizeof *vals);
        if (f->n) { memcpy(nm, f->names, (size_t)f->n * sizeof *nm); memcpy(vals, f->vals, (size_t)f->n * sizeof *vals); }
        f->names = nm;
        f->vals = vals;
        f->cap = cap;
    }
    f->names[f->n] = name;
    f->vals[f->n++] = v;
}

static int lookup(render *r, const char *name, jv *out)
{
    for (frame *f = r->scope; f; f = f->parent)
        for (int i = f->n - 1; i >= 0; i--)
            if (!strcmp(f->names[i], name)) { *out = f->vals[i]; return 1; }
    return 0;
}

/* ---- strings by code point, as Python indexes them ---- */

static size_t cp_count(const jstr *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->len; i++) n += ((unsigned char)s->p[i] & 0xC0) != 0x80;
    return n;
}

static size_t cp_offset(const jstr *s, size_t k)
{
    size_t i = 0;
    while (i < s->len && k) {
        i++;
        while (i < s->len && ((unsigned char)s->p[i] & 0xC0) == 0x80) i++;
        k--;
    }
    return i;
}

/* ---- expressions ---- */

static jv eval(render *r, const jnode *n);
static void exec_body(render *r, const jnodes *body);

static int64_t as_index(render *r, jv v, const char *what)
{
    if (v.t == JV_INT) return v.i;
    if (v.t == JV_BOOL) return v.b;
    R_ERR(r, "%s must be an integer, not %s", what, jv_type_name(v));
}

static jv get_item(render *r, jv obj, jv key, const char *desc)
{
    switch (obj.t) {
    case JV_DICT: {
        jv v;
        if (jd_get(obj, key, &v)) return v;
        return jv_undef(desc);
    }
    case JV_LIST: {
        if (key.t != JV_INT && key.t != JV_BOOL) return jv_undef(desc);
        int64_t i = as_index(r, key, "a list index");
        if (i < 0) i += (int64_t)obj.l->n;
        if (i < 0 || i >= (int64_t)obj.l->n) return jv_undef(desc);
        return obj.l->v[i];
    }
    case JV_STRING: {
        if (key.t != JV_INT) return jv_undef(desc);
        int64_t n = (int64_t)cp_count(obj.s), i = key.i < 0 ? key.i + n : key.i;
        if (i < 0 || i >= n) return jv_undef(desc);
        size_t a = cp_offset(obj.s, (size_t)i), b = cp_offset(obj.s, (size_t)i + 1);
        return jv_str(&r->c, obj.s->p + a, b - a);
    }
    case JV_UNDEFINED:
        R_ERR(r, "'%s' is undefined", obj.undef_name ? obj.undef_name : "value");
    default:
        return jv_undef(desc);
    }
}

static jv get_attr(render *r, jv obj, const char *name, const char *desc)
{
    if (obj.t == JV_UNDEFINED) R_ERR(r, "'%s' is undefined", obj.undef_name ? obj.undef_name : "value");
    if (obj.t == JV_DICT) {
        jv v;
        if (jd_get_cstr(obj, name, &v)) return v;
    }
    return jv_undef(desc);
}

static const char *describe(render *r, const jnode *n)
{
    if (n->kind == N_NAME) return n->name;
    if (n->kind == N_ATTR) {
        const char *base = describe(r, n->a);
        size_t len = strlen(base) + strlen(n->name) + 2;
        char *s = ralloc(r, len);
        snprintf(s, len, "%s.%s", base, n->name);
        return s;
    }
    if (n->kind == N_ITEM) {
        const char *base = describe(r, n->a);
        size_t len = strlen(base) + 8;
        char *s = ralloc(r, len);
        snprintf(s, len, "%s[...]", base);
        return s;
    }
    return "value";
}

static void slice_bounds(render *r, const jnode *n, int64_t len, int64_t *start, int64_t *stop, int64_t *step)
{
    *step = 1;
    if (n->d) { jv s = eval(r, n->d); if (s.t != JV_NONE) *step = as_index(r, s, "a slice step"); }
    if (*step == 0) R_ERR(r, "slice step cannot be zero");
    jv a = n->b ? eval(r, n->b) : jv_none(), b = n->c ? eval(r, n->c) : jv_none();
    if (a.t == JV_NONE) *start = *step > 0 ? 0 : len - 1;
    else {
        *start = as_index(r, a, "a slice bound");
        if (*start < 0) *start += len;
        if (*step > 0) *start = *start < 0 ? 0 : *start > len ? len : *start;
        else *start = *start < 0 ? -1 : *start >= len ? len - 1 : *start;
    }
    if (b.t == JV_NONE) *stop = *step > 0 ? len : -1;
    else {
        *stop = as_index(r, b, "a slice bound");
        if (*stop < 0) *stop += len;
        if (*step > 0) *stop = *stop < 0 ? 0 : *stop > len ? len : *stop;
        else *stop = *stop < -1 ? -1 : *stop >= len ? len - 1 : *stop;
    }
}

static jv eval_slice(render *r, const jnode *n)
{
    jv obj = eval(r, n->a);
    int64_t start, stop, step;
    if (obj.t == JV_LIST) {
        slice_bounds(r, n, (int64_t)obj.l->n, &start, &stop, &step);
        jv out = jv_list(&r->c, 0);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) jl_push(&r->c, out, obj.l->v[i]);
        return out;
    }
    if (obj.t == JV_STRING) {
        int64_t len = (int64_t)cp_count(obj.s);
        slice_bounds(r, n, len, &start, &stop, &step);
        jbuf b = {0};
        jb_put(&r->c, &b, "", 0);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            size_t a = cp_offset(obj.s, (size_t)i), e = cp_offset(obj.s, (size_t)i + 1);
            jb_put(&r->c, &b, obj.s->p + a, e - a);
        }
        return jv_str(&r->c, b.p, b.len);
    }
    R_ERR(r, "cannot slice %s '%s'", jv_type_name(obj), describe(r, n->a));
}

typedef struct args {
    jv *v;
    int n;
    const char *const *kw;
    jv *kwv;
    int nkw;
} args;

static args eval_args(render *r, const jnode *n)
{
    args a = {0};
    a.n = n->args.n;
    a.v = ralloc(r, ((size_t)a.n + 1) * sizeof *a.v);
    for (int i = 0; i < a.n; i++) a.v[i] = eval(r, n->args.v[i]);
    a.nkw = n->nkw;
    a.kw = n->kw;
    a.kwv = ralloc(r, ((size_t)a.nkw + 1) * sizeof *a.kwv);
    for (int i = 0; i < a.nkw; i++) a.kwv[i] = eval(r, n->kwv.v[i]);
    return a;
}

static jv call_macro(render *r, const jnode *m, args a)
{
    if (r->depth > 64) R_ERR(r, "macro '%s': recursion too deep", m->name);
    if (a.n > m->nkw) R_ERR(r, "macro '%s' takes %d arguments, %d given", m->name, m->nkw, a.n);
    frame *f = new_frame(r, r->globals);
    for (int i = 0; i < m->nkw; i++) {
        jv v;
        int set = 0;
        if (i < a.n) { v = a.v[i]; set = 1; }
        for (int k = 0; k < a.nkw; k++) if (!strcmp(a.kw[k], m->kw[i])) { v = a.kwv[k]; set = 1; }
        if (!set) {
            frame *saved = r->scope;
            r->scope = f;
            v = m->kwv.v[i] ? eval(r, m->kwv.v[i]) : jv_undef(m->kw[i]);
            r->scope = saved;
        }
        frame_set(r, f, m->kw[i], v);
    }
    for (int k = 0; k < a.nkw; k++) {
        int known = 0;
        for (int i = 0; i < m->nkw; i++) known |= !strcmp(a.kw[k], m->kw[i]);
        if (!known) R_ERR(r, "macro '%s' has no argument '%s'", m->name, a.kw[k]);
    }
    frame *saved_scope = r->scope;
    jbuf saved_out = r->out;
    int saved_line = r->c.line;
    r->scope = f;
    r->out = (jbuf){0};
    r->depth++;
    exec_body(r, &m->body);
    r->depth--;
    jv result = jv_str(&r->c, r->out.p ? r->out.p : "", r->out.len);
    r->out = saved_out;
    r->scope = saved_scope;
    r->c.line = saved_line;
    return result;
}

static jv eval_call(render *r, const jnode *n)
{
    const jnode *callee = n->a;
    if (callee->kind == N_ATTR) {
        jv obj = eval(r, callee->a);
        args a = eval_args(r, n);
        jv out;
        jv member;
        if (obj.t == JV_DICT && jd_get_cstr(obj, callee->name, &member) && member.t == JV_FUNC) {
            if (member.fn->macro) return call_macro(r, member.fn->macro, a);
        } else if (jinja_method(&r->c, obj, callee->name, a.v, a.n, a.kw, a.kwv, a.nkw, &out)) {
            return out;
        }
        if (obj.t == JV_UNDEFINED) R_ERR(r, "'%s' is undefined", obj.undef_name ? obj.undef_name : describe(r, callee->a));
        R_ERR(r, "%s '%s' has no method '%s'", jv_type_name(obj), describe(r, callee->a), callee->name);
    }
    jv f = eval(r, callee);
    if (f.t != JV_FUNC) {
        if (f.t == JV_UNDEFINED) R_ERR(r, "'%s' is undefined", describe(r, callee));
        R_ERR(r, "'%s' (%s) is not callable", describe(r, callee), jv_type_name(f));
    }
    args a = eval_args(r, n);
    if (f.fn->macro) return call_macro(r, f.fn->macro, a);
    return jinja_global_call(&r->c, f.fn->builtin, a.v, a.n, a.kw, a.kwv, a.nkw);
}

static int is_number(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static double num_val(jv v) { return v.t == JV_FLOAT ? v.f : v.t == JV_INT ? (double)v.i : (double)v.b; }
static int64_t int_val(jv v) { return v.t == JV_INT ? v.i : v.b; }

static _Noreturn void bad_operands(render *r, const char *op, jv a, jv b)
{
    if (a.t == JV_UNDEFINED) R_ERR(r, "'%s' is undefined", a.undef_name ? a.undef_name : "value");
    if (b.t == JV_UNDEFINED) R_ERR(r, "'%s' is undefined", b.undef_name ? b.undef_name : "value");
    R_ERR(r, "unsupported operand types for %s: %s and %s", op, jv_type_name(a), jv_type_name(b));
}

/* Template integers are 64-bit (Python's are unbounded): a result that does not fit is an error. */
#define INT_RESULT(r, op, x, y, fn)                                                                   \
    do {                                                                                              \
        int64_t res_;                                                                                 \
        if (fn(x, y, &res_)) R_ERR(r, "integer overflow in %lld %s %lld", (long long)(x), op, (long long)(y)); \
        return jv_int(res_);                                                                          \
    } while (0)

static jv int_pow(render *r, int64_t base, int64_t exp)
{
    int64_t x = 1, b = base;
    while (exp > 0) {
        if ((exp & 1) && __builtin_mul_overflow(x, b, &x)) break;
        exp >>= 1;
        if (exp && __builtin_mul_overflow(b, b, &b)) { exp = -1; break; }
    }
    if (exp != 0) R_ERR(r, "integer overflow in %lld ** ...", (long long)base);
    return jv_int(x);
}

/* The largest string or list a template may build by repetition. */
#define MAX_REPEAT_BYTES ((int64_t)1 << 26)

static jv repeat(render *r, jv seq, int64_t times)
{
    int64_t unit = seq.t == JV_STRING ? (int64_t)seq.s->len : (int64_t)(seq.l->n * sizeof(jv));
    if (times > 0 && unit > 0 && times > MAX_REPEAT_BYTES / unit)
        R_ERR(r, "repeating a %s %lld times makes it too long for a template", jv_type_name(seq), (long long)times);
    if (seq.t == JV_STRING) {
        jbuf b = {0};
        jb_put(&r->c, &b, "", 0);
        for (int64_t i = 0; i < times; i++) jb_put(&r->c, &b, seq.s->p, seq.s->len);
        return jv_str(&r->c, b.p, b.len);
    }
    jv out = jv_list(&r->c, 0);
    for (int64_t i = 0; i < times; i++)
        for (size_t k = 0; k < seq.l->n; k++) jl_push(&r->c, out, seq.l->v[k]);
    return out;
}

static jv binop(render *r, const char *op, jv a, jv b)
{
    int ints = (a.t == JV_INT || a.t == JV_BOOL) && (b.t == JV_INT || b.t == JV_BOOL);
    switch (op[0]) {
    case '~': {
        jbuf buf = {0};
        jb_put(&r->c, &buf, "", 0);
        jv_to_str(&r->c, a, &buf);
        jv_to_str(&r->c, b, &buf);
        return jv_str(&r->c, buf.p, buf.len);
    }
    case '+':
        if (ints) INT_RESULT(r, "+", int_val(a), int_val(b), __builtin_add_overflow);
        if (is_number(a) && is_number(b)) return jv_float(num_val(a) + num_val(b));
        if (a.t == JV_STRING && b.t == JV_STRING) {
            jv s = jv_str(&r->c, NULL, a.s->len + b.s->len);
            memcpy(s.s->p, a.s->p, a.s->len);
            memcpy(s.s->p + a.s->len, b.s->p, b.s->len);
            s.s->p[s.s->len] = 0;
            return s;
        }
        if (a.t == JV_LIST && b.t == JV_LIST) {
            jv out = jv_list(&r->c, a.l->n + b.l->n);
            for (size_t i = 0; i < a.l->n; i++) jl_push(&r->c, out, a.l->v[i]);
            for (size_t i = 0; i < b.l->n; i++) jl_push(&r->c, out, b.l->v[i]);
            return out;
        }
        bad_operands(r, op, a, b);
    case '-':
        if (ints) INT_RESULT(r, "-", int_val(a), int_val(b), __builtin_sub_overflow);
        if (is_number(a) && is_number(b)) return jv_float(num_val(a) - num_val(b));
        bad_operands(r, op, a, b);
    case '*':
        if (op[1] == '*') {
            if (ints && int_val(b) >= 0) return int_pow(r, int_val(a), int_val(b));
            if (is_number(a) && is_number(b)) return jv_float(pow(num_val(a), num_val(b)));
            bad_operands(r, op, a, b);
        }
        if (ints) INT_RESULT(r, "*", int_val(a), int_val(b), __builtin_mul_overflow);
        if (is_number(a) && is_number(b)) return jv_float(num_val(a) * num_val(b));
        if ((a.t == JV_STRING || a.t == JV_LIST) && (b.t == JV_INT || b.t == JV_BOOL)) return repeat(r, a, int_val(b));
        if ((b.t == JV_STRING || b.t == JV_LIST) && (a.t == JV_INT || a.t == JV_BOOL)) return repeat(r, b, int_val(a));
        bad_operands(r, op, a, b);
    case '/':
        if (!is_number(a) || !is_number(b)) bad_operands(r, op, a, b);
        if (num_val(b) == 0) R_ERR(r, "division by zero");
        if (op[1] == '/') {
            if (ints) {
                int64_t x = int_val(a), y = int_val(b);
                if (x == INT64_MIN && y == -1) R_ERR(r, "integer overflow in %lld // -1", (long long)x);
                int64_t q = x / y;
                if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
                return jv_int(q);
            }
            return jv_float(floor(num_val(a) / num_val(b)));
        }
        return jv_float(num_val(a) / num_val(b));
    case '%':
        if (a.t == JV_STRING) {
            jv argv[1] = {b};
            jv out;
            if (jinja_method(&r->c, a, "__mod__", b.t == JV_LIST ? b.l->v : argv, b.t == JV_LIST ? (int)b.l->n : 1, NULL, NULL, 0, &out))
                return out;
        }
        if (!is_number(a) || !is_number(b)) bad_operands(r, op, a, b);
        if (num_val(b) == 0) R_ERR(r, "modulo by zero");
        if (ints) {
            int64_t x = int_val(a), y = int_val(b), m = y == -1 ? 0 : x % y;
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return jv_int(m);
        }
        {
            double x = num_val(a), y = num_val(b), m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return jv_float(m);
        }
    }
    R_ERR(r, "unknown operator '%s'", op);
}

static int compare(render *r, const char *op, jv a, jv b)
{
    if (!strcmp(op, "==")) return jv_equal(a, b);
    if (!strcmp(op, "!=")) return !jv_equal(a, b);
    if (!strcmp(op, "in") || !strcmp(op, "notin")) {
        int found = 0;
        if (b.t == JV_STRING) {
            if (a.t != JV_STRING) R_ERR(r, "'in <string>' requires a string on the left, not %s", jv_type_name(a));
            found = a.s->len == 0 || memmem(b.s->p, b.s->len, a.s->p, a.s->len) != NULL;
        } else if (b.t == JV_LIST) {
            for (size_t i = 0; i < b.l->n && !found; i++) found = jv_equal(a, b.l->v[i]);
        } else if (b.t == JV_DICT) {
            jv tmp;
            found = jd_get(b, a, &tmp);
        } else if (b.t != JV_UNDEFINED) {
            R_ERR(r, "argument of type %s is not iterable", jv_type_name(b));
        }
        return op[0] == 'i' ? found : !found;
    }
    int c;
    if (is_number(a) && is_number(b)) {
        double x = num_val(a), y = num_val(b);
        c = x < y ? -1 : x > y ? 1 : 0;
    } else if (a.t == JV_STRING && b.t == JV_STRING) {
        size_t n = a.s->len < b.s->len ? a.s->len : b.s->len;
        c = memcmp(a.s->p, b.s->p, n);
        if (!c) c = a.s->len < b.s->len ? -1 : a.s->len > b.s->len;
    } else {
        bad_operands(r, op, a, b);
    }
    if (!strcmp(op, "<")) return c < 0;
    if (!strcmp(op, "<=")) return c <= 0;
    if (!strcmp(op, ">")) return c > 0;
    return c >= 0;
}

static jv eval(render *r, const jnode *n)
{
    r->c.line = n->line;
    switch (n->kind) {
    case N_LIT: return n->lit;
    case N_NAME: {
        jv v;
        if (lookup(r, n->name, &v)) return v;
        if (jinja_is_global(n->name)) {
            jfunc *f = ralloc(r, sizeof *f);
            f->builtin = n->name;
            v.t = JV_FUNC;
            v.fn = f;
            return v;
        }
        return jv_undef(n->name);
    }
    case N_ATTR: return get_attr(r, eval(r, n->a), n->name, describe(r, n));
    case N_ITEM: {
        jv obj = eval(r, n->a);
        jv key = eval(r, n->b);
        if (obj.t == JV_UNDEFINED) R_ERR(r, "'%s' is undefined", describe(r, n->a));
        return get_item(r, obj, key, describe(r, n));
    }
    case N_SLICE: return eval_slice(r, n);
    case N_CALL: return eval_call(r, n);
    case N_FILTER: {
        jv v = n->a ? eval(r, n->a) : r->filter_input;
        args a = eval_args(r, n);
        r->c.line = n->line;
        return jinja_filter(&r->c, n->name, v, a.v, a.n, a.kw, a.kwv, a.nkw);
    }
    case N_TEST: {
        jv v = eval(r, n->a);
        args a = eval_args(r, n);
        r->c.line = n->line;
        int t = jinja_test(&r->c, n->name, v, a.v, a.n);
        return jv_bool(n->negate ? !t : t);
    }
    case N_NEG: case N_POS: {
        jv v = eval(r, n->a);
        if (!is_number(v)) R_ERR(r, "bad operand type for unary %c: %s", n->kind == N_NEG ? '-' : '+', jv_type_name(v));
        if (n->kind == N_POS) return v.t == JV_BOOL ? jv_int(v.b) : v;
        if (v.t == JV_FLOAT) return jv_float(-v.f);
        if (int_val(v) == INT64_MIN) R_ERR(r, "integer overflow in -(%lld)", (long long)int_val(v));
        return jv_int(-int_val(v));
    }
    case N_NOT: return jv_bool(!jv_truthy(eval(r, n->a)));
    case N_AND: { jv a = eval(r, n->a); return jv_truthy(a) ? eval(r, n->b) : a; }
    case N_OR: { jv a = eval(r, n->a); return jv_truthy(a) ? a : eval(r, n->b); }
    case N_BIN: { jv a = eval(r, n->a), b = eval(r, n->b); r->c.line = n->line; return binop(r, n->op, a, b); }
    case N_CMP: { jv a = eval(r, n->a), b = eval(r, n->b); r->c.line = n->line; return jv_bool(compare(r, n->op, a, b)); }
    case N_COND: return jv_truthy(eval(r, n->a)) ? eval(r, n->b) : n->c ? eval(r, n->c) : jv_undef("conditional");
    case N_LIST: case N_TUPLE: {
        jv l = jv_list(&r->c, (size_t)n->args.n);
        for (int i = 0; i < n->args.n; i++) jl_push(&r->c, l, eval(r, n->args.v[i]));
        l.l->is_tuple = n->kind == N_TUPLE;
        return l;
    }
    case N_DICT: {
        jv d = jv_dict(&r->c, (size_t)n->args.n);
        for (int i = 0; i < n->args.n; i++) jd_set(&r->c, d, eval(r, n->args.v[i]), eval(r, n->kwv.v[i]));
        return d;
    }
    default: R_ERR(r, "internal error: statement node in expression");
    }
}

/* ---- statements ---- */

static void output(render *r, jv v) { jv_to_str(&r->c, v, &r->out); }

static void assign(render *r, const jnode *n, jv v)
{
    if (n->ntargets == 1) { frame_set(r, r->scope, n->targets[0], v); return; }
    if (v.t != JV_LIST || (int)v.l->n != n->ntargets)
        R_ERR(r, "cannot unpack %s into %d names", jv_type_name(v), n->ntargets);
    for (int i = 0; i < n->ntargets; i++) frame_set(r, r->scope, n->targets[i], v.l->v[i]);
}

static jv iterable_items(render *r, jv it, const jnode *src)
{
    switch (it.t) {
    case JV_LIST: return it;
    case JV_UNDEFINED: return jv_list(&r->c, 1);
    case JV_DICT: {
        if (it.d->is_namespace) break;
        jv keys = jv_list(&r->c, it.d->n);
        for (size_t i = 0; i < it.d->n; i++) jl_push(&r->c, keys, it.d->k[i]);
        return keys;
    }
    case JV_STRING: {
        jv chars = jv_list(&r->c, it.s->len);
        for (size_t i = 0; i < it.s->len;) {
            size_t k = i + 1;
            while (k < it.s->len && ((unsigned char)it.s->p[k] & 0xC0) == 0x80) k++;
            jl_push(&r->c, chars, jv_str(&r->c, it.s->p + i, k - i));
            i = k;
        }
        return chars;
    }
    default: break;
    }
    R_ERR(r, "'%s' (%s) is not iterable", describe(r, src), jv_type_name(it));
}

static void exec_for(render *r, const jnode *n)
{
    jv items = iterable_items(r, eval(r, n->a), n->a);
    frame *outer = r->scope;
    if (n->b) {
        /* the loop filter runs before counting, so loop.length and loop.last see filtered items */
        jv kept = jv_list(&r->c, items.l->n);
        frame *f = new_frame(r, outer);
        r->scope = f;
        for (size_t i = 0; i < items.l->n; i++) {
            assign(r, n, items.l->v[i]);
            if (jv_truthy(eval(r, n->b))) jl_push(&r->c, kept, items.l->v[i]);
        }
        r->scope = outer;
        items = kept;
    }
    size_t len = items.l->n;
    for (size_t i = 0; i < len; i++) {
        frame *f = new_frame(r, outer);
        r->scope = f;
        jv loop = jv_dict(&r->c, 12);
        loop.d->is_loop = 1;
        jd_set(&r->c, loop, jv_cstr(&r->c, "index0"), jv_int((int64_t)i));
        jd_set(&r->c, loop, jv_cstr(&r->c, "index"), jv_int((int64_t)i + 1));
        jd_set(&r->c, loop, jv_cstr(&r->c, "revindex0"), jv_int((int64_t)(len - i - 1)));
        jd_set(&r->c, loop, jv_cstr(&r->c, "revindex"), jv_int((int64_t)(len - i)));
        jd_set(&r->c, loop, jv_cstr(&r->c, "first"), jv_bool(i == 0));
        jd_set(&r->c, loop, jv_cstr(&r->c, "last"), jv_bool(i + 1 == len));
        jd_set(&r->c, loop, jv_cstr(&r->c, "length"), jv_int((int64_t)len));
        jd_set(&r->c, loop, jv_cstr(&r->c, "depth"), jv_int(1));
        jd_set(&r->c, loop, jv_cstr(&r->c, "depth0"), jv_int(0));
        jd_set(&r->c, loop, jv_cstr(&r->c, "previtem"), i ? items.l->v[i - 1] : jv_undef("loop.previtem"));
        jd_set(&r->c, loop, jv_cstr(&r->c, "nextitem"), i + 1 < len ? items.l->v[i + 1] : jv_undef("loop.nextitem"));
        frame_set(r, f, "loop", loop);
        assign(r, n, items.l->v[i]);
        exec_body(r, &n->body);
        r->scope = outer;
        r->cont = 0;
        if (r->brk) { r->brk = 0; break; }
    }
    if (len == 0 && n->else_body.n) exec_body(r, &n->else_body);
}

static jv render_to_string(render *r, const jnodes *body)
{
    jbuf saved = r->out;
    r->out = (jbuf){0};
    exec_body(r, body);
    jv s = jv_str(&r->c, r->out.p ? r->out.p : "", r->out.len);
    r->out = saved;
    return s;
}

static jv apply_filter_chain(render *r, const jnode *chain, jv input)
{
    jv saved = r->filter_input;
    r->filter_input = input;
    jv v = eval(r, chain);
    r->filter_input = saved;
    return v;
}

static void exec_stmt(render *r, const jnode *n)
{
    r->c.line = n->line;
    switch (n->kind) {
    case S_TEXT: jb_put(&r->c, &r->out, n->lit.s->p, n->lit.s->len); return;
    case S_OUT: output(r, eval(r, n->a)); return;
    case S_IF:
        for (int i = 0; i < n->args.n; i++)
            if (jv_truthy(eval(r, n->args.v[i]))) { exec_body(r, &n->bodies[i]); return; }
        exec_body(r, &n->else_body);
        return;
    case S_FOR: exec_for(r, n); return;
    case S_SET: {
        jv v = eval(r, n->b);
        if (n->a) {
            jv ns = eval(r, n->a);
            if (ns.t != JV_DICT || !ns.d->is_namespace)
                R_ERR(r, "cannot assign attribute '%s' on '%s' (%s): only namespace() objects take attributes", n->name,
                      n->a->name, jv_type_name(ns));
            jd_set(&r->c, ns, jv_cstr(&r->c, n->name), v);
        } else {
            assign(r, n, v);
        }
        return;
    }
    case S_SETBLOCK: {
        jv v = render_to_string(r, &n->body);
        if (n->c) v = apply_filter_chain(r, n->c, v);
        frame_set(r, r->scope, n->targets[0], v);
        return;
    }
    case S_MACRO: {
        jfunc *f = ralloc(r, sizeof *f);
        f->macro = n;
        jv v = {.t = JV_FUNC};
        v.fn = f;
        frame_set(r, r->scope, n->name, v);
        return;
    }
    case S_BREAK: r->brk = 1; return;
    case S_CONTINUE: r->cont = 1; return;
    case S_FILTERBLOCK: output(r, apply_filter_chain(r, n->c, render_to_string(r, &n->body))); return;
    case S_GENERATION: {
        size_t start = r->out.len;
        exec_body(r, &n->body);
        if (r->n_spans == r->cap_spans) {
            size_t cap = r->cap_spans ? r->cap_spans * 2 : 8;
            jinja_span *s = ralloc(r, cap * sizeof *s);
            if (r->n_spans) memcpy(s, r->spans, r->n_spans * sizeof *s);
            r->spans = s;
            r->cap_spans = cap;
        }
        r->spans[r->n_spans++] = (jinja_span){start, r->out.len};
        return;
    }
    default: R_ERR(r, "internal error: expression node as a statement");
    }
}

static void exec_body(render *r, const jnodes *body)
{
    for (int i = 0; i < body->n && !r->brk && !r->cont; i++) exec_stmt(r, body->v[i]);
}

int jinja_render_json(const jinja_template *t, const char *vars_json, jinja_result *out, char **err)
{
    *err = NULL;
    memset(out, 0, sizeof *out);
    jarena arena = {0};
    jmp_buf jump;
    render r = {0};
    r.c.arena = &arena;
    r.c.jump = &jump;
    r.c.tname = t->name;
    if (setjmp(jump)) {
        *err = r.c.err ? r.c.err : strdup("template render error");
        ja_free(&arena);
        return 1;
    }
    r.globals = new_frame(&r, NULL);
    r.scope = r.globals;
    if (vars_json) {
        jv vars = jv_from_json_text(&r.c, vars_json, "template variables");
        if (vars.t != JV_DICT) R_ERR(&r, "template variables must be a JSON object");
        for (size_t i = 0; i < vars.d->n; i++)
            if (vars.d->k[i].t == JV_STRING) frame_set(&r, r.globals, vars.d->k[i].s->p, vars.d->v[i]);
    }
    exec_body(&r, &t->root->body);
    out->text = malloc(r.out.len + 1);
    out->spans = malloc((r.n_spans + 1) * sizeof *out->spans);
    if (!out->text || !out->spans) {
        free(out->text);
        free(out->spans);
        memset(out, 0, sizeof *out);
        ja_free(&arena);
        *err = strdup("out of memory");
        return 1;
    }
    if (r.out.len) memcpy(out->text, r.out.p, r.out.len);
    out->text[r.out.len] = 0;
    out->len = r.out.len;
    if (r.n_spans) memcpy(out->spans, r.spans, r.n_spans * sizeof *out->spans);
    out->n_spans = r.n_spans;
    ja_free(&arena);
    return 0;
}
