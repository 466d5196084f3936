/* The demo's synthetic chat task: short conversations with skills a model of a few hundred thousand
 * parameters picks up in a couple of minutes of CPU training, generated deterministically from a seed.
 * Held-out prompts use words that never occur in the training conversations (the words are split
 * in two by a hash), so a correct answer on them shows a learned skill, not a memorised line. */
#ifndef FINCH_SAMPLES_DEMO_TASK_H
#define FINCH_SAMPLES_DEMO_TASK_H

#include <stddef.h>
#include <stdint.h>

#define DEMO_TEXT_MAX 96

typedef struct demo_example {
    const char *skill;              /* "first letter", "uppercase", ... */
    char prompt[DEMO_TEXT_MAX];     /* the user's message */
    char answer[DEMO_TEXT_MAX];     /* the assistant's reply */
} demo_example;

/* Number of skills, and the name of skill i. */
int demo_task_skills(void);
const char *demo_task_skill_name(int i);

/* Training example i (0-based) of the stream made from seed: skills in turn, words from the training half. */
void demo_task_train_example(uint64_t seed, int64_t i, demo_example *out);
/* Held-out example i: every skill in turn, words from the held-out half, none of them trained on. */
void demo_task_heldout_example(uint64_t seed, int64_t i, demo_example *out);

/* Writes n examples as a JSONL chat dataset ({"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}),
 * held-out examples when heldout is set. FINCH_OK or an I/O error naming the path; written to a
 * temporary file and renamed. */
int demo_task_write_jsonl(const char *path, uint64_t seed, int64_t n, int heldout);

#endif
