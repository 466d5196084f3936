/* Deterministic mutations for the fuzz checks' CTest runs: byte flips, insertions and deletions, runs
 * copied from elsewhere in the input, dictionary words spliced in, truncations. */
#ifndef FINCH_TESTS_MUTATE_H
#define FINCH_TESTS_MUTATE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct mutator { uint64_t state; const char *const *dict; size_t n_dict; } mutator;

static inline uint32_t mutator_rnd(mutator *m, uint32_t n)
{
    m->state ^= m->state << 13;
    m->state ^= m->state >> 7;
    m->state ^= m->state << 17;
    return n ? (uint32_t)((m->state >> 16) % n) : 0;
}

/* One to three random edits of seed[0..n) into buf (capacity cap > n); returns the new size. */
static inline size_t mutate(mutator *m, const uint8_t *seed, size_t n, uint8_t *buf, size_t cap)
{
    size_t size = n < cap ? n : cap;
    memcpy(buf, seed, size);
    for (int k = 0, ops = 1 + (int)mutator_rnd(m, 3); k < ops; k++) {
        size_t at = mutator_rnd(m, (uint32_t)size + 1);
        switch (mutator_rnd(m, 6)) {
        case 0: /* flip bytes */
            for (int i = 0, c = 1 + (int)mutator_rnd(m, 4); i < c && size; i++)
                buf[mutator_rnd(m, (uint32_t)size)] ^= (uint8_t)(1 + mutator_rnd(m, 255));
            break;
        case 1: /* delete a run */
            if (at < size) {
                size_t len = 1 + mutator_rnd(m, (uint32_t)(size - at < 16 ? size - at : 16));
                memmove(buf + at, buf + at + len, size - at - len);
                size -= len;
            }
            break;
        case 2: /* insert a random byte */
            if (size + 1 <= cap) {
                memmove(buf + at + 1, buf + at, size - at);
                buf[at] = (uint8_t)mutator_rnd(m, 256);
                size++;
            }
            break;
        case 3: /* copy a run from elsewhere in the input to here */
            if (size) {
                size_t from = mutator_rnd(m, (uint32_t)size), len = 1 + mutator_rnd(m, 24);
                if (from + len > size) len = size - from;
                if (size + len <= cap) {
                    uint8_t tmp[32];
                    memcpy(tmp, buf + from, len);
                    memmove(buf + at + len, buf + at, size - at);
                    memcpy(buf + at, tmp, len);
                    size += len;
                }
            }
            break;
        case 4: /* splice in a dictionary word */
            if (m->n_dict) {
                const char *w = m->dict[mutator_rnd(m, (uint32_t)m->n_dict)];
                size_t len = strlen(w);
                if (size + len <= cap) {
                    memmove(buf + at + len, buf + at, size - at);
                    memcpy(buf + at, w, len);
                    size += len;
                }
            }
            break;
        default: /* truncate */
            size = at;
            break;
        }
    }
    return size;
}

#endif
