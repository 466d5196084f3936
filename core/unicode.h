/* UTF-8 decoding/encoding and the few Unicode properties the tokenizer needs. */
#ifndef FINCH_CORE_UNICODE_H
#define FINCH_CORE_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Decodes the code point at s[*pos] (valid UTF-8 assumed) and advances *pos. */
static inline uint32_t utf8_next(const char *s, size_t *pos)
{
    const unsigned char *p = (const unsigned char *)s + *pos;
    if (p[0] < 0x80) { *pos += 1; return p[0]; }
    if (p[0] < 0xE0) { *pos += 2; return ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F); }
    if (p[0] < 0xF0) {
        *pos += 3;
        return ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    *pos += 4;
    return ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) |
           (p[3] & 0x3F);
}

/* Byte length of the UTF-8 sequence starting with lead byte c. */
static inline size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* Writes cp as UTF-8 to out (4 bytes room); returns the length. */
size_t utf8_encode(uint32_t cp, char *out);
/* Returns 1 if s[0..n) is valid UTF-8; else 0 with *bad the offset of the first invalid byte. */
int utf8_valid(const char *s, size_t n, size_t *bad);
/* Rust's char::is_whitespace (the White_Space property). */
int uni_is_whitespace(uint32_t cp);
/* Letters and numbers (Rust's char::is_alphanumeric, by general category). */
int uni_is_alnum(uint32_t cp);

#endif
