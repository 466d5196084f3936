/* Internals of the tokenizer: the parts of a tokenizer.json pipeline (normalizer, pre-tokenizer,
 * model, post-processor, decoder), each a small tagged tree built by tokenizer_load.c.
 *
 * Encoding follows Hugging Face `tokenizers`: added tokens are cut out of the raw text first; each
 * remaining segment is normalized, pre-tokenized into pieces, and every piece is encoded by the model. */
#ifndef FINCH_CORE_TOKENIZER_H
#define FINCH_CORE_TOKENIZER_H

#include "core/str_map.h"
#include "finch/data.h"

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>

/* ---- byte buffers and piece lists ---- */

typedef struct tok_buf {
    char *p;
    size_t len, cap;
} tok_buf;

int tok_buf_reserve(tok_buf *b, size_t extra);
int tok_buf_append(tok_buf *b, const char *s, size_t n);
void tok_buf_free(tok_buf *b);
int tok_ids_push(finch_tokens *t, int32_t id);
/* Makes room for extra more ids; 0, or -1 when out of memory. */
int tok_ids_reserve(finch_tokens *t, size_t extra);

/* A list of strings stored back to back: piece i is text.p[start(i) .. end[i]). */
typedef struct tok_pieces {
    tok_buf text;
    size_t *end;
    size_t n, cap;
} tok_pieces;

static inline size_t tok_piece_start(const tok_pieces *p, size_t i) { return i ? p->end[i - 1] : 0; }
/* Appends s[0..n) as a new piece (empty pieces are dropped, as Hugging Face drops them). */
int tok_pieces_add(tok_pieces *p, const char *s, size_t n);
void tok_pieces_clear(tok_pieces *p);
void tok_pieces_free(tok_pieces *p);

/* ---- regular expressions (PCRE2, UTF + UCP) ---- */

typedef struct tok_regex {
    pcre2_code *code;
} tok_regex;

/* literal: the pattern is a plain string. what names the owner in error messages. */
int tok_regex_compile(tok_regex *re, const char *pattern, int literal, const char *what);
void tok_regex_free(tok_regex *re);
/* Finds all non-overlapping matches in s[0..n) as (start, end) pairs appended to *spans. */
int tok_regex_find_all(const tok_regex *re, const char *s, size_t n, size_t **spans, size_t *nspans, size_t *cap);

/* ---- normalizers ---- */

typedef enum {
    NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWERCASE, NORM_REPLACE, NORM_PREPEND, NORM_STRIP,
    NORM_SEQUENCE
} tok_norm_type;

typedef struct tok_normalizer {
    tok_norm_type type;
    tok_regex pattern;          /* REPLACE */
    char *content;              /* REPLACE: replacement; PREPEND: prefix */
    int strip_left, strip_right;/* STRIP */
    struct tok_normalizer *children;
    int n_children;
} tok_normalizer;

/* Appends in[0..n) to out with every match of re replaced by content. */
int tok_replace_all(const tok_regex *re, const char *content, const char *in, size_t n, tok_buf *out);
/* Normalizes in[0..n) into out (cleared first). */
int tok_normalize(const tok_normalizer *nz, const char *in, size_t n, tok_buf *out);
void tok_normalizer_free(tok_normalizer *nz);

/* ---- pre-tokenizers ---- */

typedef enum {
    PRE_SPLIT, PRE_BYTE_LEVEL, PRE_METASPACE, PRE_SEQUENCE, PRE_DIGITS, PRE_WHITESPACE, PRE_WHITESPACE_SPLIT
} tok_pre_type;

typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREVIOUS, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS } tok_split_behavior;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } tok_prepend_scheme;

typedef struct tok_pretokenizer {
    tok_pre_type type;
    tok_regex pattern;             /* SPLIT; BYTE_LEVEL with use_regex; WHITESPACE */
    tok_split_behavior behavior;   /* SPLIT */
    int invert;                    /* SPLIT */
    int add_prefix_space, use_regex; /* BYTE_LEVEL */
    int raw_bytes;                 /* BYTE_LEVEL, the last step: pieces stay unmapped bytes (tok_bpe.byte_level) */
    char replacement[8];           /* METASPACE, as UTF-8 */
    tok_prepend_scheme prepend;    /* METASPACE */
    int split;                     /* METASPACE */
    int individual_digits;         /* DIGITS */
    struct tok_pretokenizer *children;
    int n_children;
} tok_pretokenizer;

/* Splits pieces in place (using tmp as scratch). at_start: the segment begins the input text. */
int tok_pretokenize(const tok_pretokenizer *pt, tok_pieces *pieces, tok_pieces *tmp, int at_start);
/* 1 if pt cuts text into words (at spaces or by a regex), so that pieces stay short. */
int tok_pretokenizer_splits(const tok_pretokenizer *pt);
void tok_pretokenizer_free(tok_pretokenizer *pt);

/* The GPT-2 byte-to-unicode table: byte b is the code point byte_level_char[b]. */
extern const uint16_t tok_byte_level_char[256];
/* Inverse: code point (< 324) -> byte, or -1. */
int tok_byte_level_byte(uint32_t cp);

/* ---- the BPE model ---- */

typedef struct tok_merge_slot { uint64_t pair; int32_t rank, new_id; } tok_merge_slot;

/* The word cache: word -> ids. Short words live in a direct-mapped table (16 MiB, its pages touched as
 * words arrive), one 64-byte line per entry
 * (key_len 0: empty; at most TOK_CACHE_KEY bytes and TOK_CACHE_IDS ids); longer ones, up to
 * TOK_CACHE_LONG bytes, in a map that is emptied when it holds TOK_CACHE_LONG_ENTRIES. */
#define TOK_CACHE_KEY 26
#define TOK_CACHE_IDS 8
#define TOK_CACHE_SLOTS (1u << 18)
#define TOK_CACHE_LONG 256
#define TOK_CACHE_LONG_ENTRIES 100000
typedef struct tok_cache_slot {
    uint32_t tag;
    uint8_t key_len, n_ids;
    char key[TOK_CACHE_KEY];
    int32_t ids[TOK_CACHE_IDS];
} tok_cache_slot;

typedef struct tok_cache {
    tok_cache_slot *slots;       /* TOK_CACHE_SLOTS */
    str_map long_words;          /* word -> offset in long_ids of its count, then its ids */
    finch_tokens long_ids;
} tok_cache;

typedef struct tok_bpe {
    str_map vocab;               /* token -> id */
    tok_merge_slot *merges;      /* open addressing on pair = (left << 32 | right); rank < 0: empty */
    size_t merges_mask;
    uint64_t *merge_bits;        /* a one-hash filter over the pairs that have a merge */
    size_t merge_bits_mask;
    int32_t unk_id;              /* -1: no unk token */
    char *continuing_prefix, *end_suffix;
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256];       /* ids of <0xNN> (byte_fallback), -1 if absent */
    /* The ByteLevel pre-tokenizer's character map is applied here rather than to piece strings: pieces are
     * raw bytes, byte b stands for the character tok_byte_level_char[b], a token of id byte_char_ids[b]. */
    int byte_level;
    int32_t byte_char_ids[256];
    int32_t *char_ids;           /* code point < 0x10000 -> id of that one-character token, -1; NULL with a prefix/suffix */
    /* Adjacent code point pairs (a << 32 | b, plus 1) that occur inside some vocab token. Set when pieces
     * can be long (no pre-tokenizer splits them): a long piece is cut between characters that no token
     * spans, and the parts are encoded (and cached) as words of their own. */
    uint64_t *pairs;
    size_t pairs_mask;
} tok_bpe;

int tok_bpe_reserve_merges(tok_bpe *m, size_t n);
void tok_bpe_add_merge(tok_bpe *m, int32_t a, int32_t b, int32_t rank, int32_t new_id);
/* Builds the lookup tables once vocab and merges are loaded. long_pieces: pieces are not cut into words
 * by a pre-tokenizer (see pairs). Call after setting byte_level. */
int tok_bpe_prepare(tok_bpe *m, int long_pieces);
/* Appends the ids of one pre-tokenized piece. cache: NULL for none. */
int tok_bpe_encode(const tok_bpe *m, tok_cache *cache, const char *s, size_t n, finch_tokens *out);
void tok_cache_free(tok_cache *c);
void tok_bpe_free(tok_bpe *m);

/* ---- added tokens ---- */

typedef struct tok_added {
    char *content;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, normalized, single_word;
} tok_added;

/* A byte trie over added-token contents, for leftmost-longest matching. */
typedef struct tok_trie_node {
    int32_t child_first;   /* index of first child edge in edges, -1 none */
    int32_t token;         /* index into added tokens ending here, -1 none */
} tok_trie_node;

typedef struct tok_trie {
    uint8_t first_byte[256];  /* 1 if some token starts with this byte */
    tok_trie_node *nodes;
    size_t n_nodes, cap_nodes;
    struct tok_trie_edge { int32_t next_sibling, node; unsigned char byte; } *edges;
    size_t n_edges, cap_edges;
} tok_trie;

int tok_trie_add(tok_trie *t, const char *s, size_t n, int32_t token);
/* Longest token matching at s[0..n), -1 if none; *len its length. */
int32_t tok_trie_match(const tok_trie *t, const char *s, size_t n, size_t *len);
void tok_trie_free(tok_trie *t);

/* A segment of input after cutting out added tokens: either an added token id or text to encode. */
typedef struct tok_segment {
    size_t start, end;  /* byte range of text */
    int32_t id;         /* >= 0: an added token */
} tok_segment;

/* Splits s[0..n) into segments around the added tokens of trie, honouring each token's lstrip, rstrip
 * and single_word flags; skip_special leaves special tokens as text. Offsets are added to base. */
int tok_added_split(const tok_added *added, const tok_trie *trie, const char *s, size_t n, size_t base,
                    int skip_special, tok_segment **segs, size_t *nsegs, size_t *cap);

/* ---- post-processor and decoder ---- */

typedef enum { POST_NONE, POST_TEMPLATE, POST_BYTE_LEVEL, POST_BERT, POST_SEQUENCE } tok_post_type;

typedef struct tok_post {
    tok_post_type type;
    /* TEMPLATE: single sequence items; id >= 0 is a special token id run, -1 is the sequence $A. */
    struct tok_post_item { int32_t *ids; int n_ids; } *items;
    int n_items;
    struct tok_post *children;
    int n_children;
} tok_post;

typedef enum {
    DEC_BYTE_LEVEL, DEC_METASPACE, DEC_BYTE_FALLBACK, DEC_FUSE, DEC_STRIP, DEC_REPLACE, DEC_SEQUENCE
} tok_dec_type;

typedef struct tok_decoder {
    tok_dec_type type;
    char replacement[8];          /* METASPACE */
    int prepend_first;            /* METASPACE: drop the replacement in the first token */
    uint32_t strip_char;          /* STRIP */
    int strip_start, strip_stop;  /* STRIP */
    tok_regex pattern;            /* REPLACE */
    char *content;                /* REPLACE */
    struct tok_decoder *children;
    int n_children;
} tok_decoder;

/* Appends s[0..n) to out as UTF-8, each maximal invalid subsequence replaced by U+FFFD (Rust's
 * String::from_utf8_lossy). */
int tok_utf8_lossy(const char *s, size_t n, tok_buf *out);
/* Runs a decoder over tokens (a piece list), leaving the decoded pieces in tokens. */
int tok_decode_chain(const tok_decoder *d, tok_pieces *tokens, tok_pieces *tmp);
void tok_decoder_free(tok_decoder *d);
void tok_post_free(tok_post *p);

/* ---- the tokenizer ---- */

/* Working storage of encoding: buffers reused from call to call and the word cache. */
typedef struct tok_work {
    tok_segment *segs, *sub;
    size_t nsegs, cap_segs, nsub, cap_sub;
    tok_buf norm;
    tok_pieces pieces, tmp;
    tok_cache *cache;             /* NULL: none */
} tok_work;

struct finch_tokenizer {
    char *path;
    tok_normalizer *normalizer;   /* NULL: none */
    tok_pretokenizer *pretokenizer;
    tok_bpe bpe;
    tok_post *post;
    tok_decoder *decoder;
    tok_added *added;
    int n_added;
    tok_trie trie_raw;            /* added tokens matched on raw text (normalized = false) */
    tok_trie trie_norm;           /* added tokens matched on normalized text */
    int has_norm_added;
    char **id_to_token;           /* every id: model vocab and added tokens */
    uint8_t *id_special;
    int32_t n_ids;
    str_map added_map;            /* added token content -> id */
    /* One tok_work lent to one encode call at a time (a try-lock): a call that finds it taken works with
     * storage of its own, without the cache. */
    pthread_mutex_t work_lock;
    tok_work *work;
    /* tokenizer_config.json */
    char *bos_token, *eos_token, *pad_token, *unk_token, *chat_template;
    int add_bos_token, add_eos_token;
};

/* tokenizer_load.c */
int tok_load_json(finch_tokenizer *tok, const char *json_path);
int tok_load_config(finch_tokenizer *tok, const char *config_path);

#endif
