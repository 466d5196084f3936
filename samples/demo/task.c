/* The demo's synthetic chat task (see task.h). A word whose hash is a multiple of HELDOUT_EVERY
 * belongs to the held-out part, every other word to the training part. */
#include "samples/demo/task.h"
#include "core/error.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HELDOUT_EVERY 4
#define WORD_LEN 4

static uint64_t mix(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int heldout_word(const char *w)
{
    uint64_t h = 1469598103934665603ull;  /* FNV-1a */
    for (; *w; w++) h = (h ^ (unsigned char)*w) * 1099511628211ull;
    return mix(h) % HELDOUT_EVERY == 0;
}

/* A word of the wanted half, drawn from the generator state *s: four random lowercase letters, or
 * with name set a capitalised consonant-vowel-consonant-vowel name ("Nora"). Every word has the same
 * length, so where a letter sits relative to the answer never changes: a model this small learns
 * the skills in far fewer steps than with words of mixed lengths. */
static void word(uint64_t *s, int heldout, int name, char *w)
{
    static const char consonants[] = "bcdfghjklmnprstvz", vowels[] = "aeiou";
    do {
        for (int i = 0; i < WORD_LEN; i++) {
            const char *set = !name ? "abcdefghijklmnopqrstuvwxyz" : i % 2 ? vowels : consonants;
            w[i] = set[mix(++*s) % strlen(set)];
        }
        w[WORD_LEN] = 0;
    } while (heldout_word(w) != heldout);
    if (name) w[0] = (char)(w[0] - 'a' + 'A');
}

/* ---- skills -------------------------------------------------------------------------------- */

static void greeting(uint64_t *s, int heldout, demo_example *e)
{
    char n[8];
    word(s, heldout, 1, n);
    snprintf(e->prompt, sizeof e->prompt, "I am %s.", n);
    snprintf(e->answer, sizeof e->answer, "Hello %s, I am Finch.", n);
}

static void first_letter(uint64_t *s, int heldout, demo_example *e)
{
    char w[8];
    word(s, heldout, 0, w);
    snprintf(e->prompt, sizeof e->prompt, "First letter of %s?", w);
    snprintf(e->answer, sizeof e->answer, "%c", w[0]);
}

static void last_letter(uint64_t *s, int heldout, demo_example *e)
{
    char w[8];
    word(s, heldout, 0, w);
    snprintf(e->prompt, sizeof e->prompt, "Last letter of %s?", w);
    snprintf(e->answer, sizeof e->answer, "%c", w[strlen(w) - 1]);
}

static void uppercase(uint64_t *s, int heldout, demo_example *e)
{
    char w[8];
    word(s, heldout, 0, w);
    snprintf(e->prompt, sizeof e->prompt, "Uppercase %s", w);
    size_t n = strlen(w);
    for (size_t i = 0; i <= n; i++) e->answer[i] = (char)(w[i] >= 'a' && w[i] <= 'z' ? w[i] - 'a' + 'A' : w[i]);
}

static const struct {
    const char *name;
    void (*make)(uint64_t *s, int heldout, demo_example *e);
} SKILLS[] = {
    {"greeting", greeting},
    {"first letter", first_letter},
    {"last letter", last_letter},
    {"uppercase", uppercase},
};
#define N_SKILLS (int)(sizeof SKILLS / sizeof SKILLS[0])

int demo_task_skills(void) { return N_SKILLS; }
const char *demo_task_skill_name(int i) { return i >= 0 && i < N_SKILLS ? SKILLS[i].name : NULL; }

static void example(uint64_t seed, int64_t i, int heldout, demo_example *out)
{
    memset(out, 0, sizeof *out);
    uint64_t s = mix(seed * 2 + (uint64_t)heldout) ^ mix((uint64_t)i);
    int skill = (int)(i % N_SKILLS);
    out->skill = SKILLS[skill].name;
    SKILLS[skill].make(&s, heldout, out);
}

void demo_task_train_example(uint64_t seed, int64_t i, demo_example *out) { example(seed, i, 0, out); }
void demo_task_heldout_example(uint64_t seed, int64_t i, demo_example *out) { example(seed, i, 1, out); }

int demo_task_write_jsonl(const char *path, uint64_t seed, int64_t n, int heldout)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return finch_error(FINCH_ERR_IO, "cannot write %s", tmp);
    int rc = FINCH_OK;
    for (int64_t i = 0; i < n && !rc; i++) {
        demo_example e;
        example(seed, i, heldout, &e);
        cJSON *line = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(line, "messages");
        const char *roles[2] = {"user", "assistant"}, *texts[2] = {e.prompt, e.answer};
        for (int k = 0; k < 2; k++) {
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", roles[k]);
            cJSON_AddStringToObject(m, "content", texts[k]);
            cJSON_AddItemToArray(msgs, m);
        }
        char *text = cJSON_PrintUnformatted(line);
        cJSON_Delete(line);
        if (!text) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory writing %s", path);
        else if (fprintf(f, "%s\n", text) < 0) rc = finch_error(FINCH_ERR_IO, "cannot write %s", tmp);
        free(text);
    }
    if (fclose(f) && !rc) rc = finch_error(FINCH_ERR_IO, "cannot write %s", tmp);
    if (!rc && rename(tmp, path)) rc = finch_error(FINCH_ERR_IO, "cannot rename %s to %s", tmp, path);
    if (rc) remove(tmp);
    return rc;
}
