/* Pre-tokenizers: cut each text segment into pieces that the model encodes independently
 * (Split by regex with a delimiter behaviour, ByteLevel, Metaspace, Digits, Whitespace, Sequence). */
#include "core/error.h"
#include "core/tokenizer.h"
#include "core/unicode.h"

#include <stdlib.h>
#include <string.h>

/* GPT-2's byte-to-unicode map: printable Latin-1 bytes map to themselves, the other 68 bytes to
 * U+0100 onwards in byte order. */
const uint16_t tok_byte_level_char[256] = {
    256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271,
    272, 273, 274, 275, 276, 277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287,
    288, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47,
    48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79,
    80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95,
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 289,
    290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 300, 301, 302, 303, 304, 305,
    306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321,
    322, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 323, 174, 175,
    176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191,
    192, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 204, 205, 206, 207,
    208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223,
    224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239,
    240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255,
};

int tok_byte_level_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255)) return (int)cp;
    if (cp >= 256 && cp <= 288) return (int)cp - 256;       /* bytes 0..32 */
    if (cp >= 289 && cp <= 322) return 127 + (int)cp - 289; /* bytes 127..160 */
    if (cp == 323) return 173;
    return -1;
}

/* Splits s[0..n) at the regex matches and adds the resulting pieces to out, following Hugging Face's
 * SplitDelimiterBehavior. */
static int split_by(const tok_regex *re, tok_split_behavior behavior, int invert, const char *s, size_t n,
                    tok_pieces *out)
{
    size_t *spans = NULL, nspans = 0, cap = 0;
    int rc = tok_regex_find_all(re, s, n, &spans, &nspans, &cap);
    if (rc) return rc;
    /* (start, end, is_match) covering s */
    size_t m = 0, mcap = nspans + 2;
    struct part { size_t a, b; int match; } *parts = malloc(mcap * sizeof *parts), *acc = malloc(mcap * sizeof *acc);
    if (!parts || !acc) { free(spans); free(parts); free(acc); return finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer"); }
    size_t prev = 0;
    for (size_t i = 0; i < nspans; i += 2) {
        if (m + 2 > mcap) break; /* cannot happen: at most one gap per match */
        if (spans[i] != prev) parts[m++] = (struct part){prev, spans[i], 0};
        parts[m++] = (struct part){spans[i], spans[i + 1], 1};
        prev = spans[i + 1];
    }
    if (prev != n) {
        if (m == mcap) {
            struct part *p = realloc(parts, (mcap + 1) * sizeof *p), *q = realloc(acc, (mcap + 1) * sizeof *q);
            if (p) parts = p;
            if (q) acc = q;
            if (!p || !q) { rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer"); goto done; }
            mcap++;
        }
        parts[m++] = (struct part){prev, n, 0};
    }
    if (invert)
        for (size_t i = 0; i < m; i++) parts[i].match = !parts[i].match;

    size_t k = 0;
    int prev_match = 0;
    switch (behavior) {
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < m; i++) acc[k++] = parts[i];
        break;
    case SPLIT_REMOVED:
        for (size_t i = 0; i < m; i++) if (!parts[i].match) acc[k++] = parts[i];
        break;
    case SPLIT_MERGED_PREVIOUS:
        for (size_t i = 0; i < m; i++) {
            if (parts[i].match && !prev_match && k) acc[k - 1].b = parts[i].b;
            else acc[k++] = parts[i];
            prev_match = parts[i].match;
        }
        break;
    case SPLIT_MERGED_NEXT:
        for (size_t j = m; j-- > 0;) {
            if (parts[j].match && !prev_match && k) acc[k - 1].a = parts[j].a;
            else acc[k++] = parts[j];
            prev_match = parts[j].match;
        }
        for (size_t i = 0; i < k / 2; i++) { struct part t = acc[i]; acc[i] = acc[k - 1 - i]; acc[k - 1 - i] = t; }
        break;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < m; i++) {
            if (parts[i].match == prev_match && k) acc[k - 1].b = parts[i].b;
            else acc[k++] = parts[i];
            prev_match = parts[i].match;
        }
        break;
    }
    for (size_t i = 0; i < k; i++)
        if (tok_pieces_add(out, s + acc[i].a, acc[i].b - acc[i].a)) { rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer"); break; }
done:
    free(spans);
    free(parts);
    free(acc);
    return rc;
}

static int byte_level_map(const char *s, size_t n, int raw, tok_pieces *out)
{
    if (raw) return tok_pieces_add(out, s, n) ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer") : FINCH_OK;
    char small[512], *buf = 2 * n <= sizeof small ? small : malloc(2 * n);
    if (!buf) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer");
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t cp = tok_byte_level_char[(unsigned char)s[i]];
        if (cp < 0x80) buf[len++] = (char)cp;
        else { buf[len++] = (char)(0xC0 | (cp >> 6)); buf[len++] = (char)(0x80 | (cp & 0x3F)); }
    }
    int rc = tok_pieces_add(out, buf, len) ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer") : FINCH_OK;
    if (buf != small) free(buf);
    return rc;
}

static int byte_level(const tok_pretokenizer *pt, const char *s, size_t n, tok_pieces *out)
{
    char *with_space = NULL;
    if (pt->add_prefix_space && (n == 0 || s[0] != ' ')) {
        with_space = malloc(n + 1);
        if (!with_space) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer");
        with_space[0] = ' ';
        memcpy(with_space + 1, s, n);
        s = with_space;
        n++;
    }
    int rc = FINCH_OK;
    if (pt->use_regex) {
        tok_pieces split = {0};
        rc = split_by(&pt->pattern, SPLIT_ISOLATED, 0, s, n, &split);
        for (size_t i = 0; rc == FINCH_OK && i < split.n; i++) {
            size_t a = tok_piece_start(&split, i);
            rc = byte_level_map(split.text.p + a, split.end[i] - a, pt->raw_bytes, out);
        }
        tok_pieces_free(&split);
    } else {
        rc = byte_level_map(s, n, pt->raw_bytes, out);
    }
    free(with_space);
    return rc;
}

static int metaspace(const tok_pretokenizer *pt, const char *s, size_t n, int first, tok_pieces *out)
{
    size_t rl = strlen(pt->replacement);
    tok_buf b = {0};
    int rc = FINCH_OK;
    int starts_with_rep = n >= rl && memcmp(s, pt->replacement, rl) == 0;
    if (n && !starts_with_rep && (s[0] != ' ') &&
        (pt->prepend == PREPEND_ALWAYS || (pt->prepend == PREPEND_FIRST && first)))
        rc = tok_buf_append(&b, pt->replacement, rl);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = s[i] == ' ' ? tok_buf_append(&b, pt->replacement, rl) : tok_buf_append(&b, s + i, 1);
    if (rc) { tok_buf_free(&b); return finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer"); }
    if (!pt->split) {
        rc = tok_pieces_add(out, b.p, b.len) ? finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer") : FINCH_OK;
    } else {
        /* MergedWithNext on the replacement: each piece starts at a replacement character. */
        size_t a = 0;
        for (size_t i = 1; rc == FINCH_OK && i + rl <= b.len; i++) {
            if (memcmp(b.p + i, pt->replacement, rl) == 0) {
                if (tok_pieces_add(out, b.p + a, i - a)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer");
                a = i;
            }
        }
        if (rc == FINCH_OK && tok_pieces_add(out, b.p + a, b.len - a)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "pre-tokenizer");
    }
    tok_buf_free(&b);
    return rc;
}

int tok_pretokenize(const tok_pretokenizer *pt, tok_pieces *pieces, tok_pieces *tmp, int at_start)
{
    if (pt->type == PRE_SEQUENCE) {
        for (int i = 0; i < pt->n_children; i++) {
            int rc = tok_pretokenize(&pt->children[i], pieces, tmp, at_start);
            if (rc) return rc;
        }
        return FINCH_OK;
    }
    tok_pieces_clear(tmp);
    int rc = FINCH_OK;
    for (size_t i = 0; rc == FINCH_OK && i < pieces->n; i++) {
        size_t a = tok_piece_start(pieces, i);
        const char *s = pieces->text.p + a;
        size_t n = pieces->end[i] - a;
        switch (pt->type) {
        case PRE_SPLIT: case PRE_DIGITS: case PRE_WHITESPACE: case PRE_WHITESPACE_SPLIT:
            rc = split_by(&pt->pattern, pt->behavior, pt->invert, s, n, tmp);
            break;
        case PRE_BYTE_LEVEL: rc = byte_level(pt, s, n, tmp); break;
        case PRE_METASPACE: rc = metaspace(pt, s, n, at_start && i == 0, tmp); break;
        case PRE_SEQUENCE: break;
        }
    }
    if (rc) return rc;
    tok_pieces t = *pieces;
    *pieces = *tmp;
    *tmp = t;
    return FINCH_OK;
}

int tok_pretokenizer_splits(const tok_pretokenizer *pt)
{
    switch (pt->type) {
    case PRE_SEQUENCE:
        for (int i = 0; i < pt->n_children; i++) if (tok_pretokenizer_splits(&pt->children[i])) return 1;
        return 0;
    case PRE_BYTE_LEVEL: return pt->use_regex;
    case PRE_METASPACE: return pt->split;
    case PRE_DIGITS: return 0;
    default: return 1;
    }
}

void tok_pretokenizer_free(tok_pretokenizer *pt)
{
    if (!pt) return;
    tok_regex_free(&pt->pattern);
    for (int i = 0; i < pt->n_children; i++) tok_pretokenizer_free(&pt->children[i]);
    free(pt->children);
}
