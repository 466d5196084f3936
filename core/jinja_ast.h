/* The syntax tree of a parsed Jinja template, shared by the parser and the evaluator. */
#ifndef FINCH_CORE_JINJA_AST_H
#define FINCH_CORE_JINJA_AST_H

#include "core/jinja.h"

typedef enum {
    /* expressions */
    N_LIT, N_NAME, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_NEG, N_POS, N_NOT, N_AND, N_OR, N_BIN,
    N_CMP, N_COND, N_LIST, N_TUPLE, N_DICT,
    /* statements */
    S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_BREAK, S_CONTINUE, S_FILTERBLOCK, S_GENERATION, S_CALLBLOCK
} jnode_kind;

typedef struct jnodes { struct jnode **v; int n, cap; } jnodes;

typedef struct jnode {
    jnode_kind kind;
    int line;
    jv lit;                  /* N_LIT; S_TEXT (a string) */
    const char *name;        /* N_NAME, N_ATTR, N_FILTER, N_TEST, S_SET attr, S_SETBLOCK, S_MACRO */
    const char *op;          /* N_BIN, N_CMP: "+", "==", "in", "notin", ... */
    int negate;              /* N_TEST: is not */
    struct jnode *a, *b, *c, *d;
    jnodes args;             /* call / filter / test arguments; list / tuple / dict items; if conditions */
    const char **kw;         /* keyword argument names (N_CALL, N_FILTER); macro parameter names */
    jnodes kwv;              /* keyword argument values; dict values; macro defaults (NULL = required) */
    int nkw;
    jnodes body;             /* statement bodies; S_IF: one S_TEXT-free body per condition, see bodies */
    jnodes else_body;
    struct jnodes *bodies;   /* S_IF: bodies[i] for args.v[i] */
    const char **targets;    /* S_FOR, S_SET: assignment names */
    int ntargets;
} jnode;

#endif
