/* A Jinja2 interpreter for chat templates: the language subset that real tokenizer_config.json
 * templates use, with the environment transformers renders them in (trim_blocks, lstrip_blocks,
 * loop controls, raise_exception, tojson with json.dumps semantics, a sandbox that forbids mutation
 * of lists and dicts).
 *
 * Values live in an arena owned by the render (or, for literals, by the template); they are never
 * freed one by one. Errors inside the interpreter unwind with longjmp to the entry point, which
 * reports them with the template's name and line. */
#ifndef FINCH_CORE_JINJA_H
#define FINCH_CORE_JINJA_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

/* ---- arena ---- */

typedef struct jarena {
    struct jchunk *head;
} jarena;

void *ja_alloc(jarena *a, size_t n); /* zeroed; longjmps on out-of-memory via the current context */
void ja_free(jarena *a);

/* ---- values ---- */

typedef struct jbuf { char *p; size_t len, cap; } jbuf; /* a growable string in the arena */

typedef enum { JV_UNDEFINED, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STRING, JV_LIST, JV_DICT, JV_FUNC } jv_type;

typedef struct jstr { size_t len; char p[]; } jstr;

typedef struct jv {
    jv_type t;
    union {
        int b;
        int64_t i;
        double f;
        jstr *s;
        struct jlist *l;
        struct jdict *d;
        struct jfunc *fn;
        const char *undef_name; /* what was looked up, for error messages */
    };
} jv;

typedef struct jlist { size_t n, cap; jv *v; int is_tuple; } jlist;
typedef struct jdict { size_t n, cap; jv *k, *v; int is_namespace, is_loop; } jdict;

struct jnode;
typedef struct jfunc {
    const struct jnode *macro;  /* a {% macro %} */
    const char *builtin;        /* a global function: "range", "namespace", ... */
} jfunc;

/* ---- templates ---- */

typedef struct jinja_template {
    jarena arena;
    const char *name;
    struct jnode *root;
} jinja_template;

/* Parses source. On failure returns NULL with *err set to a message allocated with malloc. */
jinja_template *jinja_parse(const char *source, const char *name, char **err);
void jinja_template_free(jinja_template *t);

/* A span of the output produced inside {% generation %} ... {% endgeneration %}. */
typedef struct jinja_span { size_t start, end; } jinja_span;

typedef struct jinja_result {
    char *text;          /* malloc'd, NUL-terminated */
    size_t len;
    jinja_span *spans;   /* malloc'd generation spans */
    size_t n_spans;
} jinja_result;

/* Renders the template with global variables given as a JSON object text. On failure returns non-zero
 * with *err set (malloc'd); a raise_exception() message is reported as "raised: ...". */
int jinja_render_json(const jinja_template *t, const char *vars_json, jinja_result *out, char **err);

/* ---- internals shared by the interpreter's files ---- */

typedef struct jctx jctx;

jv jv_str(jctx *c, const char *s, size_t n);
jv jv_cstr(jctx *c, const char *s);
jv jv_list(jctx *c, size_t cap);
jv jv_dict(jctx *c, size_t cap);
void jl_push(jctx *c, jv list, jv item);
void jd_set(jctx *c, jv dict, jv key, jv val);
/* Returns 1 and *out if found. */
int jd_get(jv dict, jv key, jv *out);
int jd_get_cstr(jv dict, const char *key, jv *out);

static inline jv jv_undef(const char *name) { jv v = {.t = JV_UNDEFINED}; v.undef_name = name; return v; }
static inline jv jv_none(void) { return (jv){.t = JV_NONE}; }
static inline jv jv_bool(int b) { jv v = {.t = JV_BOOL}; v.b = !!b; return v; }
static inline jv jv_int(int64_t i) { jv v = {.t = JV_INT}; v.i = i; return v; }
static inline jv jv_float(double f) { jv v = {.t = JV_FLOAT}; v.f = f; return v; }

int jv_truthy(jv v);
int jv_equal(jv a, jv b);
/* Python's str(): appended to *buf (a growable string owned by the context). */
void jv_to_str(jctx *c, jv v, struct jbuf *buf);
jv jv_stringify(jctx *c, jv v);
/* json.dumps(v, ensure_ascii=False, indent=indent (<0: None), sort_keys=False). */
void jv_to_json(jctx *c, jv v, int indent, struct jbuf *buf);
jv jv_from_json_text(jctx *c, const char *json, const char *what);
const char *jv_type_name(jv v);

void jb_put(jctx *c, jbuf *b, const char *s, size_t n);
static inline void jb_puts(jctx *c, jbuf *b, const char *s) { size_t n = 0; while (s[n]) n++; jb_put(c, b, s, n); }

/* Errors: record the message and unwind to the render (or parse) entry point. */
_Noreturn void jerr(jctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Builtins (jinja_builtins.c). */
int jinja_has_filter(const char *name);
int jinja_has_test(const char *name);
jv jinja_filter(jctx *c, const char *name, jv v, const jv *args, int nargs, const char *const *kwnames, const jv *kwvals, int nkw);
int jinja_test(jctx *c, const char *name, jv v, const jv *args, int nargs);
/* obj.name(args): 1 and *out if obj has such a method. */
int jinja_method(jctx *c, jv obj, const char *name, const jv *args, int nargs, const char *const *kwnames,
                 const jv *kwvals, int nkw, jv *out);
/* A global function: range, namespace, raise_exception, strftime_now, dict. */
jv jinja_global_call(jctx *c, const char *name, const jv *args, int nargs, const char *const *kwnames, const jv *kwvals, int nkw);
int jinja_is_global(const char *name);

struct jctx {
    jarena *arena;
    jmp_buf *jump;
    char *err;          /* malloc'd message */
    const char *tname;
    int line;
};

#endif
