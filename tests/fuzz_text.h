/* Fuzz checks of the text parsers, each shared by a libFuzzer target (FINCH_FUZZ=ON: fuzz_dataset,
 * fuzz_jinja, fuzz_tokenizer) and a deterministic mutation test that always runs in CTest
 * (test_dataset_mutations, test_jinja_mutations, test_tokenizer_mutations).
 *
 * Each takes arbitrary bytes and returns 0, or -1 when an invariant broke, with why filled in. Inputs that
 * are rightly rejected return 0: what is checked is that they fail cleanly (a documented status and a
 * message naming the input), and that what is accepted comes out well-formed. */
#ifndef FINCH_TESTS_FUZZ_TEXT_H
#define FINCH_TESTS_FUZZ_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* data is a JSONL file: read with every format and both bad-line policies; each record's messages
 * are valid JSON with canonical roles and render through the chatml template. */
int fuzz_dataset_check(const uint8_t *data, size_t size, char *why, size_t why_len);

/* data is a Jinja template, optionally followed by a NUL byte and the messages JSON: parsed and rendered. */
int fuzz_jinja_check(const uint8_t *data, size_t size, char *why, size_t why_len);

/* data[0] picks the mode. Even: data + 1 is text, encoded by the shared Qwen3, Llama 3 and SentencePiece
 * tokenizers (FINCH_SHARED_DIR) with and without the fast paths, then decoded. Odd: data + 1 is a
 * tokenizer.json, loaded and, if it loads, used to encode and decode a few strings. */
int fuzz_tokenizer_check(const uint8_t *data, size_t size, char *why, size_t why_len);

/* A scratch file name for this process (under $TMPDIR or /tmp) ending in suffix. */
const char *fuzz_scratch_path(const char *suffix);
/* Writes data to path; 0 or -1. */
int fuzz_write_file(const char *path, const uint8_t *data, size_t size);

#endif
