/* What `finch generate` and `finch chat` share: their model, adapter and sampling options, loading
 * the model with its tokenizer and chat template, and turning a prompt or a conversation into ids. */
#ifndef FINCH_SAMPLES_GEN_SETUP_H
#define FINCH_SAMPLES_GEN_SETUP_H

#include "finch/data.h"
#include "finch/finch.h"
#include "finch/generate.h"

#define GEN_MAX_STOP 16

typedef struct gen_setup {
    const char *cmd;                       /* "finch generate" */
    const char *model, *adapter, *backend, *dtype, *template_name, *system;
    const char *stop[GEN_MAX_STOP];
    int n_stop;
    int load_in_4bit;                      /* --4bit */
    int tokenizer_optional;                /* prompts given as ids: a model folder without tokenizer.json is fine */
    finch_generate_options opts;
    finch_runtime *rt;
    finch_model *m;
    finch_tokenizer *tok;
    finch_chat_template *tpl;              /* when a conversation is rendered */
} gen_setup;

/* The options both commands take, for their usage text. */
extern const char gen_setup_usage[];

void gen_setup_init(gen_setup *g, const char *cmd);
/* Takes the option at argv[*i] (and its value) if it is a shared one: 1 taken, 0 not shared, -1 bad
 * (message printed). */
int gen_setup_option(gen_setup *g, int argc, char **argv, int *i);
/* Loads the runtime, model (+ adapter), tokenizer and, when want_template, the chat template. 0 or 1
 * (message printed). */
int gen_setup_open(gen_setup *g, int want_template);
void gen_setup_close(gen_setup *g);
/* Ids of a plain prompt (with the tokenizer's special tokens, e.g. BOS). */
int gen_encode_text(gen_setup *g, const char *text, finch_tokens *out);
/* Ids of a conversation (a JSON array of messages, --system put first when it has none) rendered with
 * the generation prompt. */
int gen_encode_chat(gen_setup *g, const char *messages_json, finch_tokens *out);
const char *gen_finish_name(finch_finish_reason r);

#endif
