/* finch — tokenizers, chat templates and training data.
 *
 * Tokenizer: loads a Hugging Face tokenizer.json (and tokenizer_config.json beside it when present)
 * and encodes text to exactly the ids Hugging Face `tokenizers` produces. Parts of a tokenizer.json
 * that finch does not implement are an error naming them, never a silently different encoding.
 *
 * Chat templates: the Jinja template of tokenizer_config.json (or a built-in named one) rendered with
 * messages given as JSON, as transformers' apply_chat_template renders it.
 *
 * Datasets: JSONL files of conversations (messages / ShareGPT / Alpaca) or plain text, read one line
 * at a time, turned into token ids with labels (-100 = not trained) and packed into rows.
 *
 * Every call returns a finch_status; on failure finch_last_error() names the file, line or part at fault.
 */
#ifndef FINCH_DATA_H
#define FINCH_DATA_H

#include "finch/types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FINCH_LABEL_IGNORE (-100)

/* A growable array of token ids. Zero-initialise it; calls that fill one APPEND to it (set len = 0
 * to start over) and grow it as needed. */
typedef struct finch_tokens {
    int32_t *ids;
    size_t len, cap;
} finch_tokens;

void finch_tokens_free(finch_tokens *t);
/* Frees a string or array returned by a finch data call. */
void finch_data_free(void *p);

/* ---- tokenizer --------------------------------------------------------------------------------- */

typedef struct finch_tokenizer finch_tokenizer;

/* path: a folder holding tokenizer.json (and optionally tokenizer_config.json), or a tokenizer.json file. */
finch_status finch_tokenizer_load(const char *path, finch_tokenizer **out);
void finch_tokenizer_free(finch_tokenizer *tok);

enum {
    FINCH_ENCODE_ADD_SPECIAL = 1,   /* run the post-processor (BOS/EOS as the tokenizer defines them) */
    FINCH_ENCODE_SPLIT_SPECIAL = 2  /* treat special-token text as plain text (not matched as tokens) */
};
/* Appends the ids of text[0..len) to out. Text must be valid UTF-8. */
finch_status finch_tokenizer_encode(const finch_tokenizer *tok, const char *text, size_t len, unsigned flags,
                                    finch_tokens *out);

enum { FINCH_DECODE_SKIP_SPECIAL = 1 };
/* Decodes ids to a NUL-terminated string (free with finch_data_free). */
finch_status finch_tokenizer_decode(const finch_tokenizer *tok, const int32_t *ids, size_t n, unsigned flags,
                                    char **out_text, size_t *out_len);

int32_t finch_tokenizer_vocab_size(const finch_tokenizer *tok);   /* 1 + the largest id */
/* The token string of an id (NULL if none); the id of an exact token string (-1 if none). */
const char *finch_tokenizer_id_to_token(const finch_tokenizer *tok, int32_t id);
int32_t finch_tokenizer_token_to_id(const finch_tokenizer *tok, const char *token);
int finch_tokenizer_is_special(const finch_tokenizer *tok, int32_t id);

/* From tokenizer_config.json (NULL / -1 when absent). */
typedef struct finch_tokenizer_config {
    const char *bos_token, *eos_token, *pad_token, *unk_token;
    int32_t bos_id, eos_id, pad_id, unk_id;
    const char *chat_template;      /* the default template, NULL if the tokenizer has none */
    int add_bos_token, add_eos_token; /* -1 when not stated */
} finch_tokenizer_config;

finch_status finch_tokenizer_config_get(const finch_tokenizer *tok, finch_tokenizer_config *out);

/* ---- chat templates ---------------------------------------------------------------------------- */

typedef struct finch_chat_template finch_chat_template;

/* Compiles Jinja template source. name labels it in error messages. */
finch_status finch_chat_template_parse(const char *source, const char *name, finch_chat_template **out);
/* A built-in template: "chatml", "llama-3", "mistral", "gemma", "qwen2.5", "phi-3", "alpaca". */
finch_status finch_chat_template_builtin(const char *name, finch_chat_template **out);
/* The tokenizer's own template (tokenizer_config.json "chat_template"); FINCH_ERR_UNSUPPORTED if it has none. */
finch_status finch_chat_template_from_tokenizer(const finch_tokenizer *tok, finch_chat_template **out);
void finch_chat_template_free(finch_chat_template *t);
/* The names of the built-in templates, NULL-terminated. */
const char *const *finch_chat_template_builtin_names(void);

typedef struct finch_chat_options {
    int add_generation_prompt;
    const char *bos_token, *eos_token; /* NULL: none (the template sees undefined) */
    const char *tools_json;            /* a JSON array of tool schemas, or NULL */
    int enable_thinking;               /* -1: not passed, 0: false, 1: true */
    const char *extra_json;            /* a JSON object whose members become extra template variables, or NULL */
} finch_chat_options;

finch_chat_options finch_chat_options_default(void);
/* Options filled from a tokenizer's bos/eos tokens. */
finch_chat_options finch_chat_options_for(const finch_tokenizer *tok);

/* Renders messages (a JSON array of {"role", "content", ...} objects). The result is NUL-terminated;
 * free it with finch_data_free. A template that calls raise_exception() fails with its message. */
finch_status finch_chat_template_render(const finch_chat_template *t, const char *messages_json,
                                        const finch_chat_options *opts, char **out_text);

/* ---- training examples: ids and labels --------------------------------------------------------- */

/* One tokenized training example. labels[i] is the id to learn at position i (unshifted, as in
 * Hugging Face: labels == input_ids where trained) or FINCH_LABEL_IGNORE. */
typedef struct finch_example {
    finch_tokens ids;
    finch_tokens labels;
} finch_example;

void finch_example_free(finch_example *e);

typedef struct finch_label_options {
    int train_on_responses_only;  /* 1 (default): only assistant turns (with their end-of-turn token) */
    int last_turn_only;           /* 1: only the last assistant turn */
    int add_eos_if_missing;       /* plain text: append EOS (default 1) */
    int add_bos;                  /* plain text: prepend BOS when the tokenizer's config asks (default 1) */
} finch_label_options;

finch_label_options finch_label_options_default(void);

/* Renders messages_json with the template and tokenizes it; labels follow opts. A conversation with no
 * trainable token is an error (FINCH_ERR_FORMAT), never a silent all -100 example. */
finch_status finch_example_from_chat(const finch_tokenizer *tok, const finch_chat_template *t,
                                     const char *messages_json, const finch_chat_options *chat,
                                     const finch_label_options *opts, finch_example *out);
/* Continued pre-training text: every token trained. */
finch_status finch_example_from_text(const finch_tokenizer *tok, const char *text, size_t len,
                                     const finch_label_options *opts, finch_example *out);

/* ---- datasets ---------------------------------------------------------------------------------- */

typedef enum finch_dataset_format {
    FINCH_DATASET_AUTO = 0,   /* detected from the first valid line */
    FINCH_DATASET_MESSAGES,   /* {"messages": [{"role", "content"}, ...]} */
    FINCH_DATASET_SHAREGPT,   /* {"conversations": [{"from", "value"}, ...]} */
    FINCH_DATASET_ALPACA,     /* {"instruction", "input"?, "output"} */
    FINCH_DATASET_TEXT        /* {"text": ...} */
} finch_dataset_format;

typedef enum finch_bad_line_policy {
    FINCH_BAD_LINE_FAIL = 0,  /* the first bad line is an error naming file:line */
    FINCH_BAD_LINE_SKIP = 1   /* bad lines are skipped and counted */
} finch_bad_line_policy;

typedef struct finch_dataset_options {
    finch_dataset_format format;
    finch_bad_line_policy bad_lines;
    const char *alpaca_system;  /* optional system prompt for Alpaca rows */
} finch_dataset_options;

finch_dataset_options finch_dataset_options_default(void);

typedef struct finch_dataset finch_dataset;

/* One record, normalised: text for FINCH_DATASET_TEXT, else messages as a JSON array of
 * {"role": "system"|"user"|"assistant"|"tool", "content"}. Pointers stay valid until the next call. */
typedef struct finch_record {
    finch_dataset_format format;   /* the file's format */
    const char *messages_json;     /* NULL for text */
    const char *text;              /* NULL for conversations */
    size_t text_len;
    int64_t line;                  /* 1-based line number in the file */
} finch_record;

finch_status finch_dataset_open(const char *path, const finch_dataset_options *opts, finch_dataset **out);
/* Reads the next record. Sets *has_record = 0 at the end of the file. */
finch_status finch_dataset_next(finch_dataset *ds, finch_record *rec, int *has_record);
/* Starts again from the first line (counters reset). */
finch_status finch_dataset_rewind(finch_dataset *ds);
finch_dataset_format finch_dataset_get_format(const finch_dataset *ds);
int64_t finch_dataset_bad_lines(const finch_dataset *ds);
void finch_dataset_close(finch_dataset *ds);
const char *finch_dataset_format_name(finch_dataset_format f);

/* ---- batching: packing and padding ------------------------------------------------------------- */

/* Rows of token ids ready for the model. Packed rows hold several examples back to back:
 * position_ids restart at 0 for each, cu_seqlens[r*(max_seqs+1) ..] gives each row's boundaries
 * (offsets within the row, first 0, ending at the row's used length), and the first label of every
 * example is FINCH_LABEL_IGNORE so no loss crosses a boundary. Padding uses pad_id with labels
 * FINCH_LABEL_IGNORE and attention_mask 0. */
typedef struct finch_packed_batch {
    int64_t rows, seq_len;
    int32_t *input_ids;       /* [rows, seq_len] */
    int32_t *labels;          /* [rows, seq_len] */
    int32_t *position_ids;    /* [rows, seq_len] */
    uint8_t *attention_mask;  /* [rows, seq_len]: 1 real token, 0 padding */
    int32_t *seq_ids;         /* [rows, seq_len]: index of the example within its row, -1 padding */
    int32_t *cu_seqlens;      /* [rows, max_seqs + 1] */
    int32_t *n_seqs;          /* [rows]: examples in each row */
    int64_t max_seqs;
} finch_packed_batch;

void finch_packed_batch_free(finch_packed_batch *b);

typedef struct finch_pack_options {
    int64_t max_seq_length;   /* row length; longer examples are truncated (and counted) */
    int packing;              /* 1: pack several examples per row; 0: one padded example per row */
    int32_t pad_id;
    int truncate_left;        /* 0: drop the end of long examples (default) */
} finch_pack_options;

typedef struct finch_pack_stats {
    int64_t examples, truncated, rows, tokens, trained_tokens;
} finch_pack_stats;

/* Lays n examples out in rows (first-fit, in the order given). */
finch_status finch_pack_examples(const finch_example *examples, size_t n, const finch_pack_options *opts,
                                 finch_packed_batch *out, finch_pack_stats *stats);

/* A deterministic permutation of 0..n-1 from seed (Fisher-Yates on splitmix64). */
void finch_shuffle_indices(size_t *idx, size_t n, uint64_t seed);

#ifdef __cplusplus
}
#endif

#endif
