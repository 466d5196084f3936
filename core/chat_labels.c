/* Training examples from conversations: the chat is rendered with its template and tokenized exactly as
 * Hugging Face does (apply_chat_template, then encode without extra special tokens), and labels mark
 * the assistant turns.
 *
 * Assistant spans come from the template itself, never from string markers:
 *   - a template with {% generation %} blocks marks them directly;
 *   - otherwise, for assistant message i, the conversation before it rendered with
 *     add_generation_prompt=True must be a prefix of the full rendering: the turn starts where that
 *     prefix ends, and runs through the first special token after it (the template's end-of-turn
 *     token: <|im_end|>, <|eot_id|>, </s>, <end_of_turn>, ...). Trailing newlines after it stay -100.
 * Byte positions become token positions by checking that the text before a boundary encodes to a
 * prefix of the full ids (a boundary inside a token trains that token). */
#include "core/chat_template.h"
#include "core/error.h"
#include "core/tokenizer.h"

#include <stdlib.h>
#include <string.h>

finch_label_options finch_label_options_default(void)
{
    finch_label_options o = {0};
    o.train_on_responses_only = 1;
    o.add_eos_if_missing = 1;
    o.add_bos = 1;
    return o;
}

void finch_example_free(finch_example *e)
{
    if (!e) return;
    finch_tokens_free(&e->ids);
    finch_tokens_free(&e->labels);
}

/* Token index where byte offset b of text begins (text[0..b) encodes to ids[0..k)); hint: a known
 * boundary (hint_b, hint_k) before b, so usually only text[hint_b..b) is encoded. */
static int token_boundary(const finch_tokenizer *tok, const char *text, size_t b, const finch_tokens *ids,
                          size_t hint_b, size_t hint_k, size_t *k_out)
{
    finch_tokens t = {0};
    int rc = finch_tokenizer_encode(tok, text + hint_b, b - hint_b, 0, &t);
    if (rc) return rc;
    int ok = hint_k + t.len <= ids->len && !memcmp(ids->ids + hint_k, t.ids, t.len * sizeof *t.ids);
    if (ok) {
        *k_out = hint_k + t.len;
        finch_tokens_free(&t);
        return FINCH_OK;
    }
    t.len = 0;
    rc = finch_tokenizer_encode(tok, text, b, 0, &t);
    if (rc == FINCH_OK) {
        size_t k = 0;
        while (k < t.len && k < ids->len && t.ids[k] == ids->ids[k]) k++;
        *k_out = k;
    }
    finch_tokens_free(&t);
    return rc;
}

static int is_blank_token(const finch_tokenizer *tok, int32_t id)
{
    char *s = NULL;
    size_t n = 0;
    if (finch_tokenizer_decode(tok, &id, 1, 0, &s, &n)) return 0;
    int blank = 1;
    for (size_t i = 0; i < n; i++) blank &= s[i] == '\n' || s[i] == ' ' || s[i] == '\r' || s[i] == '\t';
    free(s);
    return blank && n > 0;
}

static cJSON *prefix_messages(const cJSON *messages, int count)
{
    cJSON *out = cJSON_CreateArray();
    int i = 0;
    for (const cJSON *e = messages->child; out && e && i < count; e = e->next, i++)
        cJSON_AddItemToArray(out, cJSON_Duplicate(e, 1));
    return out;
}

static int role_is(const cJSON *m, const char *role)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
    return cJSON_IsString(r) && !strcmp(r->valuestring, role);
}

/* Marks labels for assistant message idx; *hint carries the last verified boundary forward. */
static int mark_turn(const finch_tokenizer *tok, const finch_chat_template *t, const cJSON *messages, int idx,
                     const finch_chat_options *chat, const jinja_result *full, finch_example *ex, size_t *hint_b,
                     size_t *hint_k)
{
    cJSON *prefix = prefix_messages(messages, idx);
    if (!prefix) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "labels");
    finch_chat_options o = *chat;
    o.add_generation_prompt = 1;
    jinja_result pr;
    int rc = chat_render_cjson(t, prefix, &o, &pr);
    cJSON_Delete(prefix);
    if (rc) return finch_error_prefix(rc, "locating assistant turn %d (rendering the messages before it): ", idx);
    free(pr.spans);
    if (pr.len > full->len || memcmp(pr.text, full->text, pr.len) != 0) {
        free(pr.text);
        return finch_error(FINCH_ERR_UNSUPPORTED,
                           "assistant turn %d: the template renders the conversation before it differently from the "
                           "same messages inside the full conversation, so its span cannot be located; use a template "
                           "with {%% generation %%} blocks or train on whole conversations", idx);
    }
    size_t start_b = pr.len, start_k;
    free(pr.text);
    if (start_b < *hint_b) start_b = *hint_b;
    rc = token_boundary(tok, full->text, start_b, &ex->ids, *hint_b, *hint_k, &start_k);
    if (rc) return rc;
    size_t end_k = start_k;
    while (end_k < ex->ids.len && !finch_tokenizer_is_special(tok, ex->ids.ids[end_k])) end_k++;
    if (end_k == ex->ids.len) {
        /* no end-of-turn token: the turn runs to the end of the text, blank tokens excepted */
        while (end_k > start_k && is_blank_token(tok, ex->ids.ids[end_k - 1])) end_k--;
    } else {
        end_k++; /* the end-of-turn token is trained: it is what teaches the model to stop */
    }
    for (size_t k = start_k; k < end_k; k++) ex->labels.ids[k] = ex->ids.ids[k];
    *hint_b = start_b;
    *hint_k = start_k;
    return FINCH_OK;
}

static int labels_from_spans(const finch_tokenizer *tok, const jinja_result *full, finch_example *ex, int last_only)
{
    size_t hint_b = 0, hint_k = 0;
    for (size_t s = last_only ? full->n_spans - 1 : 0; s < full->n_spans; s++) {
        size_t a, b;
        int rc = token_boundary(tok, full->text, full->spans[s].start, &ex->ids, hint_b, hint_k, &a);
        if (!rc) rc = token_boundary(tok, full->text, full->spans[s].end, &ex->ids, full->spans[s].start, a, &b);
        if (rc) return rc;
        /* a token straddling the end belongs to the span */
        if (b < ex->ids.len && full->spans[s].end > 0) {
            finch_tokens t = {0};
            if (finch_tokenizer_encode(tok, full->text, full->spans[s].end, 0, &t) == FINCH_OK && t.len > b) b++;
            finch_tokens_free(&t);
        }
        for (size_t k = a; k < b; k++) ex->labels.ids[k] = ex->ids.ids[k];
        hint_b = full->spans[s].start;
        hint_k = a;
    }
    return FINCH_OK;
}

finch_status finch_example_from_chat(const finch_tokenizer *tok, const finch_chat_template *t,
                                     const char *messages_json, const finch_chat_options *chat,
                                     const finch_label_options *opts, finch_example *out)
{
    if (!tok || !t || !messages_json || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_example_from_chat: NULL argument");
    finch_label_options lo = opts ? *opts : finch_label_options_default();
    finch_chat_options co = chat ? *chat : finch_chat_options_for(tok);
    co.add_generation_prompt = 0;
    memset(out, 0, sizeof *out);
    cJSON *messages = cJSON_Parse(messages_json);
    if (!cJSON_IsArray(messages)) {
        cJSON_Delete(messages);
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "chat messages are not a JSON array");
    }
    jinja_result full = {0};
    int rc = chat_render_cjson(t, messages, &co, &full);
    if (rc == FINCH_OK) rc = finch_tokenizer_encode(tok, full.text, full.len, 0, &out->ids);
    for (size_t i = 0; rc == FINCH_OK && i < out->ids.len; i++)
        if (tok_ids_push(&out->labels, lo.train_on_responses_only ? FINCH_LABEL_IGNORE : out->ids.ids[i]))
            rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "labels");
    if (rc == FINCH_OK && lo.train_on_responses_only) {
        if (full.n_spans) {
            rc = labels_from_spans(tok, &full, out, lo.last_turn_only);
        } else {
            int n = cJSON_GetArraySize(messages), last = -1;
            for (int i = 0; i < n; i++) if (role_is(cJSON_GetArrayItem(messages, i), "assistant")) last = i;
            if (last < 0) rc = finch_error(FINCH_ERR_FORMAT, "the conversation has no assistant message to train on");
            size_t hint_b = 0, hint_k = 0;
            for (int i = lo.last_turn_only ? last : 0; rc == FINCH_OK && i < n; i++)
                if (role_is(cJSON_GetArrayItem(messages, i), "assistant"))
                    rc = mark_turn(tok, t, messages, i, &co, &full, out, &hint_b, &hint_k);
        }
    }
    if (rc == FINCH_OK) {
        size_t trained = 0;
        for (size_t i = 1; i < out->labels.len; i++) trained += out->labels.ids[i] != FINCH_LABEL_IGNORE;
        if (!trained) rc = finch_error(FINCH_ERR_FORMAT, "the conversation has no trainable token (every label is -100)");
    }
    free(full.text);
    free(full.spans);
    cJSON_Delete(messages);
    if (rc) finch_example_free(out);
    return rc;
}

finch_status finch_example_from_text(const finch_tokenizer *tok, const char *text, size_t len,
                                     const finch_label_options *opts, finch_example *out)
{
    if (!tok || (!text && len) || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_example_from_text: NULL argument");
    finch_label_options lo = opts ? *opts : finch_label_options_default();
    memset(out, 0, sizeof *out);
    int rc = finch_tokenizer_encode(tok, text, len, lo.add_bos ? FINCH_ENCODE_ADD_SPECIAL : 0, &out->ids);
    finch_tokenizer_config cfg;
    finch_tokenizer_config_get(tok, &cfg);
    if (rc == FINCH_OK && lo.add_eos_if_missing && cfg.eos_id >= 0 && (!out->ids.len || out->ids.ids[out->ids.len - 1] != cfg.eos_id))
        if (tok_ids_push(&out->ids, cfg.eos_id)) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "labels");
    for (size_t i = 0; rc == FINCH_OK && i < out->ids.len; i++)
        if (tok_ids_push(&out->labels, out->ids.ids[i])) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "labels");
    if (rc == FINCH_OK && out->ids.len < 2) rc = finch_error(FINCH_ERR_FORMAT, "the text is too short to train on (%zu tokens)", out->ids.len);
    if (rc) finch_example_free(out);
    return rc;
}
