/* Parsing a Jinja template: a lexer that applies Jinja's whitespace rules (`-` modifiers, trim_blocks,
 * lstrip_blocks, newline normalisation, the dropped final newline) and a recursive-descent parser
 * following the precedence of jinja2/parser.py. */
#include "core/jinja_ast.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_FLOAT, T_OP, T_EOF } ttype;

typedef struct jtok {
    ttype type;
    int line;
    const char *s;  /* T_NAME, T_OP: the source text; T_TEXT, T_STRING: decoded (arena) */
    size_t n;
    int64_t i;
    double f;
} jtok;

typedef struct parser {
    jctx c;
    jinja_template *t;
    jtok *toks;
    size_t n, cap, pos;
} parser;

#define P_ERR(p, ...) jerr(&(p)->c, __VA_ARGS__)

static void *palloc(parser *p, size_t n)
{
    void *q = ja_alloc(&p->t->arena, n);
    if (!q) P_ERR(p, "out of memory");
    return q;
}

static char *pstrndup(parser *p, const char *s, size_t n)
{
    char *q = palloc(p, n + 1);
    memcpy(q, s, n);
    q[n] = 0;
    return q;
}

static void emit(parser *p, jtok t)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        jtok *q = palloc(p, cap * sizeof *q);
        if (p->n) memcpy(q, p->toks, p->n * sizeof *q);
        p->toks = q;
        p->cap = cap;
    }
    p->toks[p->n++] = t;
}

/* ---- lexer ---- */

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }
static int is_name_start(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_'; }
static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static void emit_text(parser *p, const char *s, size_t n, int line)
{
    if (n) emit(p, (jtok){.type = T_TEXT, .line = line, .s = s, .n = n});
}

/* Decodes a Python string literal body (escapes) into the arena. */
static const char *decode_string(parser *p, const char *s, size_t n, size_t *out_n)
{
    char *o = palloc(p, n * 2 + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) { o[k++] = s[i]; continue; }
        char e = s[++i];
        unsigned cp = 0;
        int hex = 0;
        switch (e) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'v': o[k++] = '\v'; break;
        case 'a': o[k++] = '\a'; break;
        case '0': o[k++] = '\0'; break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case '\n': break;
        case 'x': hex = 2; break;
        case 'u': hex = 4; break;
        case 'U': hex = 8; break;
        default: o[k++] = '\\'; o[k++] = e; break;
        }
        if (!hex) continue;
        if (i + (size_t)hex >= n) P_ERR(p, "truncated \\%c escape in a string literal", e);
        for (int h = 0; h < hex; h++) {
            char d = s[++i];
            cp = cp * 16 + (unsigned)(is_digit(d) ? d - '0' : (d | 32) >= 'a' && (d | 32) <= 'f' ? (d | 32) - 'a' + 10 : 0);
        }
        if (cp < 0x80) o[k++] = (char)cp;
        else if (cp < 0x800) { o[k++] = (char)(0xC0 | (cp >> 6)); o[k++] = (char)(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) {
            o[k++] = (char)(0xE0 | (cp >> 12)); o[k++] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[k++] = (char)(0x80 | (cp & 0x3F));
        } else {
            o[k++] = (char)(0xF0 | (cp >> 18)); o[k++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            o[k++] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    o[k] = 0;
    *out_n = k;
    return o;
}

/* Lexes the inside of {{ }} or {% %} from src[*pos]; returns with *pos after the closing delimiter and
 * *strip_after set for a "-" close, *plus for a "+" close. */
static void lex_tag(parser *p, const char *src, size_t len, size_t *pos, int *line, int block, int *strip_after, int *plus)
{
    const char *close = block ? "%}" : "}}";
    size_t i = *pos;
    *strip_after = *plus = 0;
    for (;;) {
        while (i < len && is_space(src[i])) { if (src[i] == '\n') (*line)++; i++; }
        if (i >= len) P_ERR(p, "unclosed %s tag", block ? "{%" : "{{");
        if ((src[i] == '-' || src[i] == '+') && !strncmp(src + i + 1, close, 2)) {
            *strip_after = src[i] == '-';
            *plus = src[i] == '+';
            *pos = i + 3;
            emit(p, (jtok){.type = block ? T_BLOCK_END : T_VAR_END, .line = *line});
            return;
        }
        if (!strncmp(src + i, close, 2)) {
            *pos = i + 2;
            emit(p, (jtok){.type = block ? T_BLOCK_END : T_VAR_END, .line = *line});
            return;
        }
        char ch = src[i];
        if (ch == '\'' || ch == '"') {
            size_t j = i + 1;
            while (j < len && src[j] != ch) { if (src[j] == '\\') j++; if (j < len && src[j] == '\n') (*line)++; j++; }
            if (j >= len) P_ERR(p, "unterminated string literal");
            size_t n;
            const char *s = decode_string(p, src + i + 1, j - i - 1, &n);
            emit(p, (jtok){.type = T_STRING, .line = *line, .s = s, .n = n});
            i = j + 1;
        } else if (is_digit(ch)) {
            size_t j = i;
            int is_float = 0;
            while (j < len && (is_digit(src[j]) || src[j] == '_')) j++;
            if (j + 1 < len && src[j] == '.' && is_digit(src[j + 1])) {
                is_float = 1;
                j++;
                while (j < len && (is_digit(src[j]) || src[j] == '_')) j++;
            }
            if (j < len && (src[j] == 'e' || src[j] == 'E') &&
                (is_digit(src[j + 1]) || ((src[j + 1] == '-' || src[j + 1] == '+') && is_digit(src[j + 2])))) {
                is_float = 1;
                j += 2;
                while (j < len && is_digit(src[j])) j++;
            }
            char num[64];
            size_t k = 0;
            for (size_t q = i; q < j; q++) {
                if (src[q] == '_') continue;
                if (k == sizeof num - 1) P_ERR(p, "number literal '%.20s...' is too long", src + i);
                num[k++] = src[q];
            }
            num[k] = 0;
            jtok t = {.type = is_float ? T_FLOAT : T_INT, .line = *line, .s = src + i, .n = j - i};
            errno = 0;
            if (is_float) t.f = strtod(num, NULL);
            else t.i = strtoll(num, NULL, 10);
            /* templates get 64-bit integers (Python's are unbounded): a larger literal is an error */
            if (!is_float && errno == ERANGE) P_ERR(p, "integer literal %s does not fit in 64 bits", num);
            emit(p, t);
            i = j;
        } else if (is_name_start(ch)) {
            size_t j = i;
            while (j < len && (is_name_start(src[j]) || is_digit(src[j]))) j++;
            emit(p, (jtok){.type = T_NAME, .line = *line, .s = src + i, .n = j - i});
            i = j;
        } else {
            static const char *ops2[] = {"//", "**", "==", "!=", "<=", ">=", NULL};
            size_t n = 0;
            for (int k = 0; ops2[k]; k++) if (!strncmp(src + i, ops2[k], 2)) n = 2;
            if (!n && strchr("+-*/%~<>=()[]{},.:|", ch)) n = 1;
            if (!n) P_ERR(p, "unexpected character '%c'", ch);
            emit(p, (jtok){.type = T_OP, .line = *line, .s = src + i, .n = n});
            i += n;
        }
    }
}

/* Is src[i..] "{% raw %}" (any whitespace, optional -/+)? Sets *end after it. */
static int match_keyword_tag(const char *src, size_t len, size_t i, const char *kw, size_t *end, int *lstrip, int *rstrip)
{
    if (i + 2 > len || strncmp(src + i, "{%", 2)) return 0;
    i += 2;
    *lstrip = 0;
    if (i < len && (src[i] == '-' || src[i] == '+')) { *lstrip = src[i] == '-'; i++; }
    while (i < len && is_space(src[i])) i++;
    size_t k = strlen(kw);
    if (i + k > len || strncmp(src + i, kw, k)) return 0;
    i += k;
    while (i < len && is_space(src[i])) i++;
    *rstrip = 0;
    if (i < len && (src[i] == '-' || src[i] == '+')) { *rstrip = src[i] == '-'; i++; }
    if (i + 2 > len || strncmp(src + i, "%}", 2)) return 0;
    *end = i + 2;
    return 1;
}

static void lex(parser *p, const char *source)
{
    /* Jinja joins the template's lines with "\n" and drops one trailing newline. */
    size_t n0 = strlen(source), len = 0;
    char *src = palloc(p, n0 + 1);
    for (size_t i = 0; i < n0; i++) {
        if (source[i] == '\r') { src[len++] = '\n'; if (i + 1 < n0 && source[i + 1] == '\n') i++; }
        else src[len++] = source[i];
    }
    if (len && src[len - 1] == '\n') len--;
    src[len] = 0;

    size_t pos = 0;
    int line = 1, line_starting = 1, strip_next = 0;
    while (pos <= len) {
        size_t q = pos;
        while (q + 1 < len && !(src[q] == '{' && (src[q + 1] == '{' || src[q + 1] == '%' || src[q + 1] == '#'))) q++;
        if (q + 1 >= len) q = len;
        size_t a = pos, b = q;
        int text_line = line;
        for (size_t i = pos; i < q; i++) if (src[i] == '\n') line++;
        if (strip_next) while (a < b && is_space(src[a])) { if (src[a] == '\n') text_line++; a++; }
        if (q == len) { emit_text(p, src + a, b - a, text_line); break; }

        char kind = src[q + 1], mod = q + 2 < len ? src[q + 2] : 0;
        if (mod == '-') {
            while (b > a && is_space(src[b - 1])) b--;
        } else if (mod != '+' && kind != '{') {
            /* lstrip_blocks: blanks between the start of a line and a block or comment tag go */
            size_t l = b;
            while (l > a && src[l - 1] != '\n') l--;
            if (l > a || line_starting) {
                size_t k = l;
                while (k < b && (src[k] == ' ' || src[k] == '\t' || src[k] == '\f' || src[k] == '\v')) k++;
                if (k == b) b = l;
            }
        }
        emit_text(p, src + a, b - a, text_line);
        size_t i = q + 2 + (mod == '-' || mod == '+');
        int strip_after = 0, plus = 0;
        if (kind == '#') {
            const char *e = strstr(src + i, "#}");
            if (!e) P_ERR(p, "unclosed comment");
            for (const char *x = src + i; x < e; x++) if (*x == '\n') line++;
            strip_after = e > src + i && e[-1] == '-';
            plus = e > src + i && e[-1] == '+';
            i = (size_t)(e - src) + 2;
        } else {
            size_t raw_end;
            int ls, rs;
            if (kind == '%' && match_keyword_tag(src, len, q, "raw", &raw_end, &ls, &rs)) {
                size_t j = raw_end;
                size_t end_start = 0, end_end = 0;
                int els = 0, ers = 0;
                for (; j < len; j++)
                    if (src[j] == '{' && match_keyword_tag(src, len, j, "endraw", &end_end, &els, &ers)) { end_start = j; break; }
                if (j >= len) P_ERR(p, "unclosed {%% raw %%} block");
                size_t ra = raw_end, rb = end_start;
                if (rs) while (ra < rb && is_space(src[ra])) ra++;
                if (els) while (rb > ra && is_space(src[rb - 1])) rb--;
                for (size_t x = q; x < end_end; x++) if (src[x] == '\n') line++;
                emit_text(p, src + ra, rb - ra, line);
                i = end_end;
                strip_after = ers;
            } else {
                emit(p, (jtok){.type = kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, .line = line});
                lex_tag(p, src, len, &i, &line, kind == '%', &strip_after, &plus);
            }
        }
        strip_next = strip_after;
        line_starting = 0;
        if (strip_after) {
            size_t k = i;
            while (k < len && is_space(src[k])) k++;
            line_starting = k > i && src[k - 1] == '\n';
        } else if (kind != '{' && !plus && i < len && src[i] == '\n') {
            i++; /* trim_blocks */
            line++;
            line_starting = 1;
        }
        pos = i;
    }
    emit(p, (jtok){.type = T_EOF, .line = line});
}

/* ---- parser ---- */

static jtok *cur(parser *p) { return &p->toks[p->pos]; }
static jtok *peek(parser *p, size_t k) { return &p->toks[p->pos + k < p->n ? p->pos + k : p->n - 1]; }
static jtok *next_tok(parser *p) { jtok *t = cur(p); if (p->pos + 1 < p->n) p->pos++; p->c.line = cur(p)->line; return t; }
static int is_op(const jtok *t, const char *op) { return t->type == T_OP && t->n == strlen(op) && !strncmp(t->s, op, t->n); }
static int is_name(const jtok *t, const char *name) { return t->type == T_NAME && t->n == strlen(name) && !strncmp(t->s, name, t->n); }

static const char *tok_desc(parser *p, const jtok *t)
{
    switch (t->type) {
    case T_NAME: case T_OP: return pstrndup(p, t->s, t->n);
    case T_STRING: return "a string";
    case T_INT: case T_FLOAT: return "a number";
    case T_BLOCK_END: return "%}";
    case T_VAR_END: return "}}";
    case T_EOF: return "the end of the template";
    default: return "text";
    }
}

static void expect_op(parser *p, const char *op)
{
    p->c.line = cur(p)->line;
    if (!is_op(cur(p), op)) P_ERR(p, "expected '%s', found '%s'", op, tok_desc(p, cur(p)));
    next_tok(p);
}

static const char *expect_name(parser *p)
{
    p->c.line = cur(p)->line;
    if (cur(p)->type != T_NAME) P_ERR(p, "expected a name, found '%s'", tok_desc(p, cur(p)));
    jtok *t = next_tok(p);
    return pstrndup(p, t->s, t->n);
}

static jnode *node(parser *p, jnode_kind k)
{
    jnode *n = palloc(p, sizeof *n);
    n->kind = k;
    n->line = cur(p)->line;
    return n;
}

static void push(parser *p, jnodes *l, jnode *n)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 4;
        jnode **v = palloc(p, (size_t)cap * sizeof *v);
        if (l->n) memcpy(v, l->v, (size_t)l->n * sizeof *v);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = n;
}

static jnode *parse_expr(parser *p);
static jnode *parse_or(parser *p);
static jnode *parse_unary(parser *p, int with_filter);
static jnode *parse_primary(parser *p);
static jnode *parse_postfix(parser *p, jnode *n);
static jnode *parse_math1(parser *p);

/* (args) after '(' has been consumed: positional and keyword arguments. */
static void parse_args(parser *p, jnode *n)
{
    int kcap = 0;
    while (!is_op(cur(p), ")")) {
        if (n->args.n || n->nkw) expect_op(p, ",");
        if (is_op(cur(p), ")")) break;
        if (cur(p)->type == T_NAME && is_op(peek(p, 1), "=")) {
            const char *k = expect_name(p);
            next_tok(p);
            if (n->nkw == kcap) {
                kcap = kcap ? kcap * 2 : 4;
                const char **kw = palloc(p, (size_t)kcap * sizeof *kw);
                if (n->nkw) memcpy(kw, n->kw, (size_t)n->nkw * sizeof *kw);
                n->kw = kw;
            }
            n->kw[n->nkw++] = k;
            push(p, &n->kwv, parse_expr(p));
        } else {
            if (n->nkw) P_ERR(p, "a positional argument follows a keyword argument");
            push(p, &n->args, parse_expr(p));
        }
    }
    expect_op(p, ")");
}

static jnode *parse_expr(parser *p)
{
    jnode *e = parse_or(p);
    while (is_name(cur(p), "if")) {
        next_tok(p);
        jnode *n = node(p, N_COND);
        n->b = e;
        n->a = parse_or(p);
        if (is_name(cur(p), "else")) { next_tok(p); n->c = parse_expr(p); }
        e = n;
    }
    return e;
}

static jnode *binary(parser *p, jnode_kind k, const char *op, jnode *a, jnode *b)
{
    jnode *n = node(p, k);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static jnode *parse_not(parser *p)
{
    if (is_name(cur(p), "not")) {
        next_tok(p);
        jnode *n = node(p, N_NOT);
        n->a = parse_not(p);
        return n;
    }
    /* comparisons, chained: a < b < c is (a < b) and (b < c) */
    jnode *left = parse_math1(p), *result = NULL;
    for (;;) {
        const char *op = NULL;
        jtok *t = cur(p);
        static const char *cmps[] = {"==", "!=", "<=", ">=", "<", ">", NULL};
        for (int k = 0; cmps[k]; k++) if (is_op(t, cmps[k])) op = cmps[k];
        if (op) next_tok(p);
        else if (is_name(t, "in")) { op = "in"; next_tok(p); }
        else if (is_name(t, "not") && is_name(peek(p, 1), "in")) { op = "notin"; next_tok(p); next_tok(p); }
        else break;
        jnode *right = parse_math1(p);
        jnode *cmp = binary(p, N_CMP, op, left, right);
        result = result ? binary(p, N_AND, "and", result, cmp) : cmp;
        left = right;
    }
    return result ? result : left;
}

/* Left-associative binary operators, one precedence level each, loosest first: a level's operands
 * are expressions of the level after it, or of `operand` below the last. */
typedef struct binary_level {
    jnode_kind kind;
    int keyword;             /* the operators are names (and, or), not symbols */
    const char *ops[5];      /* NULL-terminated */
} binary_level;

static const binary_level logic_levels[] = {{N_OR, 1, {"or", NULL}}, {N_AND, 1, {"and", NULL}}};
static const binary_level math_levels[] = {
    {N_BIN, 0, {"+", "-", NULL}},
    {N_BIN, 0, {"~", NULL}},
    {N_BIN, 0, {"*", "/", "//", "%", NULL}},
    {N_BIN, 0, {"**", NULL}},
};

/* The operator of level l at the current token, or NULL. */
static const char *level_op(parser *p, const binary_level *l)
{
    for (int k = 0; l->ops[k]; k++)
        if (l->keyword ? is_name(cur(p), l->ops[k]) : is_op(cur(p), l->ops[k])) return l->ops[k];
    return NULL;
}

static jnode *parse_binary(parser *p, const binary_level *levels, int n, jnode *(*operand)(parser *))
{
    if (n == 0) return operand(p);
    jnode *a = parse_binary(p, levels + 1, n - 1, operand);
    for (const char *op; (op = level_op(p, levels));) {
        next_tok(p);
        a = binary(p, levels->kind, op, a, parse_binary(p, levels + 1, n - 1, operand));
    }
    return a;
}

static jnode *parse_or(parser *p) { return parse_binary(p, logic_levels, 2, parse_not); }

static jnode *parse_filtered_unary(parser *p) { return parse_unary(p, 1); }

static jnode *parse_math1(parser *p) { return parse_binary(p, math_levels, 4, parse_filtered_unary); }

static const char *dotted_name(parser *p)
{
    const char *name = expect_name(p);
    while (is_op(cur(p), ".") && peek(p, 1)->type == T_NAME) {
        next_tok(p);
        const char *more = expect_name(p);
        size_t n = strlen(name) + strlen(more) + 2;
        char *joined = palloc(p, n);
        snprintf(joined, n, "%s.%s", name, more);
        name = joined;
    }
    return name;
}

static jnode *parse_filter_expr(parser *p, jnode *n)
{
    for (;;) {
        if (is_op(cur(p), "|")) {
            next_tok(p);
            jnode *f = node(p, N_FILTER);
            f->name = dotted_name(p);
            if (!jinja_has_filter(f->name)) P_ERR(p, "no filter named '%s'", f->name);
            f->a = n;
            if (is_op(cur(p), "(")) { next_tok(p); parse_args(p, f); }
            n = f;
        } else if (is_name(cur(p), "is")) {
            next_tok(p);
            jnode *t = node(p, N_TEST);
            if (is_name(cur(p), "not")) { next_tok(p); t->negate = 1; }
            t->name = dotted_name(p);
            if (!jinja_has_test(t->name)) P_ERR(p, "no test named '%s'", t->name);
            t->a = n;
            jtok *c = cur(p);
            if (is_op(c, "(")) {
                next_tok(p);
                parse_args(p, t);
            } else if ((c->type == T_NAME || c->type == T_STRING || c->type == T_INT || c->type == T_FLOAT ||
                        is_op(c, "[") || is_op(c, "{")) &&
                       !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and") && !is_name(c, "if") &&
                       !is_name(c, "in") && !is_name(c, "not")) {
                push(p, &t->args, parse_postfix(p, parse_primary(p)));
            }
            n = t;
        } else if (is_op(cur(p), "(")) {
            next_tok(p);
            jnode *call = node(p, N_CALL);
            call->a = n;
            parse_args(p, call);
            n = call;
        } else {
            return n;
        }
    }
}

static jnode *parse_unary(parser *p, int with_filter)
{
    jnode *n;
    if (is_op(cur(p), "-") || is_op(cur(p), "+")) {
        n = node(p, is_op(cur(p), "-") ? N_NEG : N_POS);
        next_tok(p);
        n->a = parse_unary(p, 0);
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    return with_filter ? parse_filter_expr(p, n) : n;
}

static jnode *parse_postfix(parser *p, jnode *n)
{
    for (;;) {
        if (is_op(cur(p), ".")) {
            next_tok(p);
            jnode *a = node(p, N_ATTR);
            a->a = n;
            if (cur(p)->type == T_INT) {
                a->kind = N_ITEM;
                jnode *idx = node(p, N_LIT);
                idx->lit = jv_int(next_tok(p)->i);
                a->b = idx;
            } else {
                a->name = expect_name(p);
            }
            n = a;
        } else if (is_op(cur(p), "[")) {
            next_tok(p);
            jnode *parts[3] = {NULL, NULL, NULL};
            int k = 0, slice = 0;
            for (;;) {
                if (is_op(cur(p), "]")) break;
                if (is_op(cur(p), ":")) {
                    slice = 1;
                    next_tok(p);
                    if (++k > 2) P_ERR(p, "a slice has at most three parts");
                    continue;
                }
                if (parts[k]) P_ERR(p, "expected ':' or ']' in a subscript");
                parts[k] = parse_expr(p);
            }
            expect_op(p, "]");
            jnode *s = node(p, slice ? N_SLICE : N_ITEM);
            s->a = n;
            if (slice) { s->b = parts[0]; s->c = parts[1]; s->d = parts[2]; }
            else {
                if (!parts[0]) P_ERR(p, "empty subscript");
                s->b = parts[0];
            }
            n = s;
        } else if (is_op(cur(p), "(")) {
            next_tok(p);
            jnode *call = node(p, N_CALL);
            call->a = n;
            parse_args(p, call);
            n = call;
        } else {
            return n;
        }
    }
}

static jnode *parse_primary(parser *p)
{
    jtok *t = cur(p);
    jnode *n;
    p->c.line = t->line;
    switch (t->type) {
    case T_NAME:
        next_tok(p);
        n = node(p, N_LIT);
        if ((t->n == 4 && (!strncmp(t->s, "true", 4) || !strncmp(t->s, "True", 4)))) n->lit = jv_bool(1);
        else if (t->n == 5 && (!strncmp(t->s, "false", 5) || !strncmp(t->s, "False", 5))) n->lit = jv_bool(0);
        else if (t->n == 4 && (!strncmp(t->s, "none", 4) || !strncmp(t->s, "None", 4))) n->lit = jv_none();
        else { n->kind = N_NAME; n->name = pstrndup(p, t->s, t->n); }
        return n;
    case T_STRING: {
        /* adjacent string literals concatenate */
        size_t total = 0;
        size_t k = p->pos;
        while (p->toks[k].type == T_STRING) total += p->toks[k++].n;
        char *s = palloc(p, total + 1);
        size_t off = 0;
        while (cur(p)->type == T_STRING) { jtok *x = next_tok(p); memcpy(s + off, x->s, x->n); off += x->n; }
        n = node(p, N_LIT);
        jstr *js = palloc(p, sizeof *js + total + 1);
        js->len = total;
        memcpy(js->p, s, total);
        n->lit.t = JV_STRING;
        n->lit.s = js;
        return n;
    }
    case T_INT: next_tok(p); n = node(p, N_LIT); n->lit = jv_int(t->i); return n;
    case T_FLOAT: next_tok(p); n = node(p, N_LIT); n->lit = jv_float(t->f); return n;
    case T_OP:
        if (is_op(t, "(")) {
            next_tok(p);
            if (is_op(cur(p), ")")) { next_tok(p); return node(p, N_TUPLE); }
            jnode *first = parse_expr(p);
            if (!is_op(cur(p), ",")) { expect_op(p, ")"); return first; }
            n = node(p, N_TUPLE);
            push(p, &n->args, first);
            while (is_op(cur(p), ",")) {
                next_tok(p);
                if (is_op(cur(p), ")")) break;
                push(p, &n->args, parse_expr(p));
            }
            expect_op(p, ")");
            return n;
        }
        if (is_op(t, "[")) {
            next_tok(p);
            n = node(p, N_LIST);
            while (!is_op(cur(p), "]")) {
                if (n->args.n) expect_op(p, ",");
                if (is_op(cur(p), "]")) break;
                push(p, &n->args, parse_expr(p));
            }
            expect_op(p, "]");
            return n;
        }
        if (is_op(t, "{")) {
            next_tok(p);
            n = node(p, N_DICT);
            while (!is_op(cur(p), "}")) {
                if (n->args.n) expect_op(p, ",");
                if (is_op(cur(p), "}")) break;
                push(p, &n->args, parse_expr(p));
                expect_op(p, ":");
                push(p, &n->kwv, parse_expr(p));
            }
            expect_op(p, "}");
            return n;
        }
        /* fallthrough */
    default:
        P_ERR(p, "unexpected '%s' in an expression", tok_desc(p, t));
    }
}

/* ---- statements ---- */

static void expect_block_end(parser *p)
{
    p->c.line = cur(p)->line;
    if (cur(p)->type != T_BLOCK_END) P_ERR(p, "expected '%%}', found '%s'", tok_desc(p, cur(p)));
    next_tok(p);
}

/* Parses statements until a block tag whose keyword is one of ends (NULL-terminated); leaves the
 * parser at that keyword (after "{%"), returning which one. ends == NULL: until the end of input. */
static int parse_body(parser *p, jnodes *body, const char *const *ends);

static void parse_targets(parser *p, jnode *n)
{
    int cap = 4;
    n->targets = palloc(p, (size_t)cap * sizeof *n->targets);
    int paren = is_op(cur(p), "(");
    if (paren) next_tok(p);
    for (;;) {
        if (n->ntargets == cap) {
            const char **t = palloc(p, (size_t)cap * 2 * sizeof *t);
            memcpy(t, n->targets, (size_t)cap * sizeof *t);
            n->targets = t;
            cap *= 2;
        }
        n->targets[n->ntargets++] = expect_name(p);
        if (!is_op(cur(p), ",")) break;
        next_tok(p);
    }
    if (paren) expect_op(p, ")");
}

static jnode *parse_statement(parser *p)
{
    int line = cur(p)->line;
    const char *kw = expect_name(p);
    jnode *n;
    if (!strcmp(kw, "if")) {
        n = node(p, S_IF);
        n->bodies = palloc(p, 64 * sizeof *n->bodies);
        push(p, &n->args, parse_expr(p));
        expect_block_end(p);
        static const char *const ends[] = {"elif", "else", "endif", NULL};
        for (;;) {
            if (n->args.n > 64) P_ERR(p, "more than 63 elif branches");
            int which = parse_body(p, &n->bodies[n->args.n - 1], ends);
            next_tok(p);
            if (which == 0) { push(p, &n->args, parse_expr(p)); expect_block_end(p); continue; }
            if (which == 1) {
                expect_block_end(p);
                static const char *const endif[] = {"endif", NULL};
                parse_body(p, &n->else_body, endif);
                next_tok(p);
            }
            expect_block_end(p);
            break;
        }
    } else if (!strcmp(kw, "for")) {
        n = node(p, S_FOR);
        parse_targets(p, n);
        if (!is_name(cur(p), "in")) P_ERR(p, "expected 'in' in a for loop");
        next_tok(p);
        n->a = parse_or(p); /* the iterable: a condition would be the loop filter */
        if (is_name(cur(p), "if")) { next_tok(p); n->b = parse_expr(p); }
        if (is_name(cur(p), "recursive")) P_ERR(p, "recursive loops are not supported");
        expect_block_end(p);
        static const char *const ends[] = {"else", "endfor", NULL};
        int which = parse_body(p, &n->body, ends);
        next_tok(p);
        if (which == 0) {
            expect_block_end(p);
            static const char *const endfor[] = {"endfor", NULL};
            parse_body(p, &n->else_body, endfor);
            next_tok(p);
        }
        expect_block_end(p);
    } else if (!strcmp(kw, "set")) {
        n = node(p, S_SET);
        if (cur(p)->type == T_NAME && is_op(peek(p, 1), ".")) {
            /* set ns.attr = value */
            n->a = node(p, N_NAME);
            n->a->name = expect_name(p);
            next_tok(p);
            n->name = expect_name(p);
        } else {
            parse_targets(p, n);
        }
        if (is_op(cur(p), "=")) {
            next_tok(p);
            jnode *v = parse_expr(p);
            if (is_op(cur(p), ",")) {
                jnode *t = node(p, N_TUPLE);
                push(p, &t->args, v);
                while (is_op(cur(p), ",")) { next_tok(p); push(p, &t->args, parse_expr(p)); }
                v = t;
            }
            n->b = v;
            expect_block_end(p);
        } else {
            if (n->a || n->ntargets != 1) P_ERR(p, "a block set assigns one name");
            n->kind = S_SETBLOCK;
            jnode *filters = NULL;
            if (is_op(cur(p), "|")) {
                filters = parse_filter_expr(p, NULL);
            }
            n->c = filters;
            expect_block_end(p);
            static const char *const ends[] = {"endset", NULL};
            parse_body(p, &n->body, ends);
            next_tok(p);
            expect_block_end(p);
        }
    } else if (!strcmp(kw, "macro")) {
        n = node(p, S_MACRO);
        n->name = expect_name(p);
        expect_op(p, "(");
        int cap = 8;
        n->kw = palloc(p, (size_t)cap * sizeof *n->kw);
        while (!is_op(cur(p), ")")) {
            if (n->nkw) expect_op(p, ",");
            if (n->nkw == cap) {
                const char **k = palloc(p, (size_t)cap * 2 * sizeof *k);
                memcpy(k, n->kw, (size_t)cap * sizeof *k);
                n->kw = k;
                cap *= 2;
            }
            n->kw[n->nkw++] = expect_name(p);
            jnode *dflt = NULL;
            if (is_op(cur(p), "=")) { next_tok(p); dflt = parse_expr(p); }
            push(p, &n->kwv, dflt);
        }
        next_tok(p);
        expect_block_end(p);
        static const char *const ends[] = {"endmacro", NULL};
        parse_body(p, &n->body, ends);
        next_tok(p);
        if (cur(p)->type == T_NAME) next_tok(p); /* {% endmacro name %} */
        expect_block_end(p);
    } else if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
        n = node(p, kw[0] == 'b' ? S_BREAK : S_CONTINUE);
        expect_block_end(p);
    } else if (!strcmp(kw, "filter")) {
        n = node(p, S_FILTERBLOCK);
        /* a filter chain applied to the body: parse "name(args) | name2" as filters of a placeholder */
        jnode *f = node(p, N_FILTER);
        f->name = dotted_name(p);
        if (!jinja_has_filter(f->name)) P_ERR(p, "no filter named '%s'", f->name);
        if (is_op(cur(p), "(")) { next_tok(p); parse_args(p, f); }
        n->c = parse_filter_expr(p, f);
        expect_block_end(p);
        static const char *const ends[] = {"endfilter", NULL};
        parse_body(p, &n->body, ends);
        next_tok(p);
        expect_block_end(p);
    } else if (!strcmp(kw, "generation")) {
        n = node(p, S_GENERATION);
        expect_block_end(p);
        static const char *const ends[] = {"endgeneration", NULL};
        parse_body(p, &n->body, ends);
        next_tok(p);
        expect_block_end(p);
    } else {
        p->c.line = line;
        P_ERR(p, "unknown or unsupported tag '{%% %s %%}'", kw);
    }
    n->line = line;
    return n;
}

static int parse_body(parser *p, jnodes *body, const char *const *ends)
{
    for (;;) {
        jtok *t = cur(p);
        p->c.line = t->line;
        if (t->type == T_EOF) {
            if (ends) {
                int k = 0;
                while (ends[k + 1]) k++;
                P_ERR(p, "unexpected end of template: missing {%% %s %%}", ends[k]);
            }
            return -1;
        }
        if (t->type == T_TEXT) {
            jnode *n = node(p, S_TEXT);
            jstr *js = palloc(p, sizeof *js + t->n + 1);
            js->len = t->n;
            memcpy(js->p, t->s, t->n);
            n->lit.t = JV_STRING;
            n->lit.s = js;
            push(p, body, n);
            next_tok(p);
        } else if (t->type == T_VAR_BEGIN) {
            next_tok(p);
            jnode *n = node(p, S_OUT);
            n->a = parse_expr(p);
            if (cur(p)->type != T_VAR_END) P_ERR(p, "expected '}}', found '%s'", tok_desc(p, cur(p)));
            next_tok(p);
            push(p, body, n);
        } else if (t->type == T_BLOCK_BEGIN) {
            jtok *kw = peek(p, 1);
            for (int i = 0; ends && ends[i]; i++)
                if (is_name(kw, ends[i])) { next_tok(p); return i; }
            if (kw->type == T_NAME && (!strncmp(kw->s, "end", 3) || is_name(kw, "elif") || is_name(kw, "else"))) {
                p->c.line = kw->line;
                P_ERR(p, "unexpected '{%% %s %%}'", pstrndup(p, kw->s, kw->n));
            }
            next_tok(p);
            push(p, body, parse_statement(p));
        } else {
            P_ERR(p, "unexpected '%s'", tok_desc(p, t));
        }
    }
}

jinja_template *jinja_parse(const char *source, const char *name, char **err)
{
    *err = NULL;
    jinja_template *volatile t = calloc(1, sizeof *t);
    if (!t) { *err = strdup("out of memory"); return NULL; }
    parser p = {0};
    jmp_buf jump;
    p.t = t;
    p.c.arena = &t->arena;
    p.c.jump = &jump;
    p.c.line = 1;
    t->name = name ? name : "template";
    p.c.tname = t->name;
    if (setjmp(jump)) {
        *err = p.c.err ? p.c.err : strdup("template parse error");
        jinja_template_free(t);
        return NULL;
    }
    char *nm = palloc(&p, strlen(t->name) + 1);
    strcpy(nm, t->name);
    t->name = nm;
    lex(&p, source);
    t->root = node(&p, S_IF); /* a container: root->body holds the template */
    parse_body(&p, &t->root->body, NULL);
    return t;
}

void jinja_template_free(jinja_template *t)
{
    if (!t) return;
    ja_free(&t->arena);
    free(t);
}
