/* An open-addressing hash map from byte strings to int32 values. Keys are copied into the map. */
#ifndef FINCH_CORE_STR_MAP_H
#define FINCH_CORE_STR_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct str_map {
    struct str_map_slot { uint32_t key_off, key_len, hash; int32_t value; } *slots; /* key_len == UINT32_MAX: empty */
    size_t mask, count;
    char *keys;            /* all keys back to back */
    size_t keys_len, keys_cap;
} str_map;

uint32_t str_hash(const char *s, size_t n);
/* Returns 0, or -1 when out of memory. An existing key gets the new value. */
int str_map_put(str_map *m, const char *key, size_t n, int32_t value);
/* The value of key, or -1 when absent (so store only values >= 0 where absence matters). */
int32_t str_map_get(const str_map *m, const char *key, size_t n);
void str_map_free(str_map *m);

#endif
