/* A small byte-level BPE tokenizer that tests write next to a golden model with a vocabulary of 320:
 * ids 0..255 the bytes, 256..299 merges of two common letters, 300.. the given special tokens in
 * order, then <|extra_N|> up to 319; tokenizer_config.json with a ChatML template (eos <|im_end|>,
 * pad <|endoftext|>). */
#ifndef FINCH_TESTS_TINY_TOKENIZER_H
#define FINCH_TESTS_TINY_TOKENIZER_H

#include <stdio.h>

/* GPT-2's byte -> code point map of the ByteLevel pre-tokenizer. */
static inline int tiny_byte_char(int b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255))) n++;
    return 256 + n;
}

/* Returns 0 on success. specials[0..n) take ids 300, 301, ... (n <= 20). */
static inline int write_tiny_tokenizer(const char *dir, const char *const *specials, int n)
{
    char path[1300];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    if (!f || n > 20) {
        if (f) fclose(f);
        return 1;
    }
    fputs("{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[", f);
    for (int i = 300; i < 320; i++) {
        char name[32];
        if (i < 300 + n) snprintf(name, sizeof name, "%s", specials[i - 300]);
        else snprintf(name, sizeof name, "<|extra_%d|>", i);
        fprintf(f, "%s{\"id\":%d,\"content\":\"%s\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}",
                i > 300 ? "," : "", i, name);
    }
    fputs("],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
          "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
          "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,"
          "\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,\"vocab\":{",
          f);
    for (int b = 0; b < 256; b++) fprintf(f, "%s\"\\u%04x\":%d", b ? "," : "", tiny_byte_char(b), b);
    const char *letters = "etaoinshr";
    int id = 256;
    char merges[44][3];
    for (int a = 0; letters[a] && id < 300; a++)
        for (int c = 0; letters[c] && id < 300; c++, id++) {
            merges[id - 256][0] = letters[a];
            merges[id - 256][1] = letters[c];
            merges[id - 256][2] = 0;
            fprintf(f, ",\"%s\":%d", merges[id - 256], id);
        }
    fputs("},\"merges\":[", f);
    for (int i = 0; i < 44; i++) fprintf(f, "%s[\"%c\",\"%c\"]", i ? "," : "", merges[i][0], merges[i][1]);
    fputs("]}}\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "w");
    if (!f) return 1;
    fputs("{\"bos_token\":null,\"eos_token\":\"<|im_end|>\",\"pad_token\":\"<|endoftext|>\",\"add_bos_token\":false,"
          "\"chat_template\":\"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\\\n' + message['content'] + "
          "'<|im_end|>' + '\\\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\\\n' }}{% endif %}\"}\n",
          f);
    fclose(f);
    return 0;
}

#endif
