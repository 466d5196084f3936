/* A byte-level BPE tokenizer that finch writes itself for `finch init` when no tokenizer is given:
 * the 256 byte symbols of GPT-2's byte-to-unicode table (id = byte value), no merges, and ChatML's
 * special tokens. Hugging Face `tokenizers` and finch load it; every UTF-8 text round-trips. */
#include "samples/finch/init_tokenizer.h"
#include "core/chat_template.h"
#include "core/error.h"
#include "core/fsutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const SPECIALS[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
#define N_SPECIALS 3

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to 256, 257, ... */
static unsigned byte_symbol(unsigned b)
{
    unsigned extra = 0;
    for (unsigned x = 0; x < 256; x++) {
        int printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174);
        if (x == b) return printable ? x : 256 + extra;
        if (!printable) extra++;
    }
    return 0;
}

static void utf8(unsigned cp, char out[5])
{
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
    }
}

static cJSON *byte_level(int add_prefix_space, int trim_offsets)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "ByteLevel");
    cJSON_AddBoolToObject(o, "add_prefix_space", add_prefix_space);
    cJSON_AddBoolToObject(o, "trim_offsets", trim_offsets);
    cJSON_AddBoolToObject(o, "use_regex", 1);
    return o;
}

static int write_json(const char *dir, const char *name, cJSON *o)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of memory writing %s", path);
    int rc = finch_write_file_atomic(path, text, strlen(text));
    free(text);
    return rc;
}

int init_write_byte_tokenizer(const char *dir, int64_t model_max_length, init_tokenizer_ids *ids)
{
    cJSON *tj = cJSON_CreateObject(), *added = cJSON_CreateArray(), *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON_AddStringToObject(tj, "version", "1.0");
    cJSON_AddNullToObject(tj, "truncation");
    cJSON_AddNullToObject(tj, "padding");
    for (int i = 0; i < N_SPECIALS; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", 256 + i);
        cJSON_AddStringToObject(a, "content", SPECIALS[i]);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddItemToObject(tj, "added_tokens", added);
    cJSON_AddNullToObject(tj, "normalizer");
    cJSON_AddItemToObject(tj, "pre_tokenizer", byte_level(0, 1));
    cJSON_AddItemToObject(tj, "post_processor", byte_level(0, 0));
    cJSON_AddItemToObject(tj, "decoder", byte_level(1, 1));
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    for (unsigned b = 0; b < 256; b++) {
        char s[5];
        utf8(byte_symbol(b), s);
        cJSON_AddNumberToObject(vocab, s, b);
    }
    for (int i = 0; i < N_SPECIALS; i++) cJSON_AddNumberToObject(vocab, SPECIALS[i], 256 + i);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", cJSON_CreateArray());
    cJSON_AddItemToObject(tj, "model", model);
    int rc = write_json(dir, "tokenizer.json", tj);

    cJSON *tc = cJSON_CreateObject(), *dec = cJSON_CreateObject();
    for (int i = 0; i < N_SPECIALS; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", 256 + i);
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "content", SPECIALS[i]);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToObject(dec, id, a);
    }
    cJSON_AddItemToObject(tc, "added_tokens_decoder", dec);
    cJSON_AddBoolToObject(tc, "add_bos_token", 0);
    cJSON_AddBoolToObject(tc, "add_eos_token", 0);
    cJSON_AddNullToObject(tc, "bos_token");
    cJSON_AddStringToObject(tc, "eos_token", "<|im_end|>");
    cJSON_AddStringToObject(tc, "pad_token", "<|endoftext|>");
    cJSON_AddNullToObject(tc, "unk_token");
    cJSON_AddStringToObject(tc, "chat_template", chat_template_builtin_source("chatml"));
    cJSON_AddNumberToObject(tc, "model_max_length", (double)model_max_length);
    cJSON_AddStringToObject(tc, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddBoolToObject(tc, "clean_up_tokenization_spaces", 0);
    if (!rc) rc = write_json(dir, "tokenizer_config.json", tc);
    else cJSON_Delete(tc);
    ids->vocab_size = 256 + N_SPECIALS;
    ids->bos_id = -1;
    ids->eos_id = 258;
    ids->pad_id = 256;
    return rc;
}
