#include "core/str_map.h"

#include <stdlib.h>
#include <string.h>

#define EMPTY UINT32_MAX

uint32_t str_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int grow(str_map *m)
{
    size_t cap = m->slots ? (m->mask + 1) * 2 : 64;
    struct str_map_slot *s = malloc(cap * sizeof *s);
    if (!s) return -1;
    for (size_t i = 0; i < cap; i++) s[i].key_len = EMPTY;
    if (m->slots) {
        for (size_t i = 0; i <= m->mask; i++) {
            if (m->slots[i].key_len == EMPTY) continue;
            size_t j = m->slots[i].hash & (cap - 1);
            while (s[j].key_len != EMPTY) j = (j + 1) & (cap - 1);
            s[j] = m->slots[i];
        }
        free(m->slots);
    }
    m->slots = s;
    m->mask = cap - 1;
    return 0;
}

int str_map_put(str_map *m, const char *key, size_t n, int32_t value)
{
    if (n >= EMPTY) return -1;
    if (!m->slots || (m->count + 1) * 4 > (m->mask + 1) * 3)
        if (grow(m)) return -1;
    uint32_t h = str_hash(key, n);
    size_t j = h & m->mask;
    while (m->slots[j].key_len != EMPTY) {
        struct str_map_slot *s = &m->slots[j];
        if (s->hash == h && s->key_len == n && memcmp(m->keys + s->key_off, key, n) == 0) {
            s->value = value;
            return 0;
        }
        j = (j + 1) & m->mask;
    }
    if (m->keys_len + n > m->keys_cap) {
        size_t cap = m->keys_cap ? m->keys_cap * 2 : 4096;
        while (cap < m->keys_len + n) cap *= 2;
        if (cap > UINT32_MAX) return -1;
        char *k = realloc(m->keys, cap);
        if (!k) return -1;
        m->keys = k;
        m->keys_cap = cap;
    }
    if (n) memcpy(m->keys + m->keys_len, key, n);
    m->slots[j] = (struct str_map_slot){(uint32_t)m->keys_len, (uint32_t)n, h, value};
    m->keys_len += n;
    m->count++;
    return 0;
}

int32_t str_map_get(const str_map *m, const char *key, size_t n)
{
    if (!m->slots) return -1;
    uint32_t h = str_hash(key, n);
    size_t j = h & m->mask;
    while (m->slots[j].key_len != EMPTY) {
        const struct str_map_slot *s = &m->slots[j];
        if (s->hash == h && s->key_len == n && memcmp(m->keys + s->key_off, key, n) == 0) return s->value;
        j = (j + 1) & m->mask;
    }
    return -1;
}

void str_map_free(str_map *m)
{
    free(m->slots);
    free(m->keys);
    memset(m, 0, sizeof *m);
}
