/* The tokenizer files `finch init` writes when it is given none. */
#ifndef FINCH_SAMPLES_INIT_TOKENIZER_H
#define FINCH_SAMPLES_INIT_TOKENIZER_H

#include <stdint.h>

typedef struct init_tokenizer_ids {
    int32_t vocab_size, bos_id, eos_id, pad_id;   /* -1: none */
} init_tokenizer_ids;

/* Writes dir/tokenizer.json (byte-level BPE, 256 byte tokens + ChatML specials) and
 * dir/tokenizer_config.json (ChatML template, eos <|im_end|>, pad <|endoftext|>). */
int init_write_byte_tokenizer(const char *dir, int64_t model_max_length, init_tokenizer_ids *ids);

#endif
