/* Chat templates: a compiled Jinja template rendered with messages and the variables transformers'
 * apply_chat_template passes (add_generation_prompt, bos_token, eos_token, tools, enable_thinking). */
#include "core/chat_template.h"
#include "core/error.h"
#include "core/tokenizer.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

finch_status finch_chat_template_parse(const char *source, const char *name, finch_chat_template **out)
{
    if (!source || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_chat_template_parse: NULL argument");
    *out = NULL;
    char *err = NULL;
    jinja_template *jt = jinja_parse(source, name ? name : "chat_template", &err);
    if (!jt) {
        int rc = finch_error(FINCH_ERR_FORMAT, "chat template %s", err ? err : "does not parse");
        free(err);
        return rc;
    }
    finch_chat_template *t = calloc(1, sizeof *t);
    if (!t) { jinja_template_free(jt); return finch_error(FINCH_ERR_OUT_OF_MEMORY, "chat template"); }
    t->jt = jt;
    *out = t;
    return FINCH_OK;
}

finch_status finch_chat_template_from_tokenizer(const finch_tokenizer *tok, finch_chat_template **out)
{
    if (!tok || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_chat_template_from_tokenizer: NULL argument");
    if (!tok->chat_template)
        return finch_error(FINCH_ERR_UNSUPPORTED, "%s: the tokenizer has no chat_template in tokenizer_config.json; "
                           "choose a built-in one (chatml, llama-3, mistral, gemma, qwen2.5, phi-3, alpaca)", tok->path);
    return finch_chat_template_parse(tok->chat_template, "tokenizer_config.json chat_template", out);
}

void finch_chat_template_free(finch_chat_template *t)
{
    if (!t) return;
    jinja_template_free(t->jt);
    free(t);
}

finch_chat_options finch_chat_options_default(void)
{
    finch_chat_options o = {0};
    o.enable_thinking = -1;
    return o;
}

finch_chat_options finch_chat_options_for(const finch_tokenizer *tok)
{
    finch_chat_options o = finch_chat_options_default();
    if (tok) {
        o.bos_token = tok->bos_token;
        o.eos_token = tok->eos_token;
    }
    return o;
}

/* Checks that messages is an array of objects with a string role; names the first bad one. */
static int check_messages(const cJSON *m)
{
    if (!cJSON_IsArray(m)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "chat messages must be a JSON array");
    int i = 0;
    for (const cJSON *e = m->child; e; e = e->next, i++) {
        if (!cJSON_IsObject(e)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "chat message %d is not an object", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        if (!cJSON_IsString(role)) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "chat message %d has no string \"role\"", i);
    }
    return FINCH_OK;
}

/* Renders with the messages given as parsed JSON (owned by the caller); the render result in *res. */
int chat_render_cjson(const finch_chat_template *t, const cJSON *messages, const finch_chat_options *opts, jinja_result *res)
{
    finch_chat_options dflt = finch_chat_options_default();
    if (!opts) opts = &dflt;
    int rc = check_messages(messages);
    if (rc) return rc;
    cJSON *vars = cJSON_CreateObject();
    if (!vars) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "chat template");
    if (opts->extra_json) {
        cJSON *extra = cJSON_Parse(opts->extra_json);
        if (!cJSON_IsObject(extra)) {
            cJSON_Delete(extra);
            cJSON_Delete(vars);
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "chat options: extra_json is not a JSON object");
        }
        for (cJSON *e = extra->child; e; e = e->next) cJSON_AddItemToObject(vars, e->string, cJSON_Duplicate(e, 1));
        cJSON_Delete(extra);
    }
    cJSON_AddItemToObject(vars, "messages", cJSON_Duplicate(messages, 1));
    cJSON_AddBoolToObject(vars, "add_generation_prompt", opts->add_generation_prompt != 0);
    if (opts->bos_token) cJSON_AddStringToObject(vars, "bos_token", opts->bos_token);
    if (opts->eos_token) cJSON_AddStringToObject(vars, "eos_token", opts->eos_token);
    if (opts->enable_thinking >= 0) cJSON_AddBoolToObject(vars, "enable_thinking", opts->enable_thinking != 0);
    if (opts->tools_json) {
        cJSON *tools = cJSON_Parse(opts->tools_json);
        if (!cJSON_IsArray(tools)) {
            cJSON_Delete(tools);
            cJSON_Delete(vars);
            return finch_error(FINCH_ERR_INVALID_ARGUMENT, "chat options: tools_json is not a JSON array");
        }
        cJSON_AddItemToObject(vars, "tools", tools);
    }
    char *text = cJSON_PrintUnformatted(vars);
    cJSON_Delete(vars);
    if (!text) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "chat template");
    char *err = NULL;
    if (jinja_render_json(t->jt, text, res, &err)) {
        rc = finch_error(strstr(err ? err : "", "out of memory") ? FINCH_ERR_OUT_OF_MEMORY : FINCH_ERR_FORMAT,
                         "chat template %s", err ? err : "failed");
        free(err);
    }
    free(text);
    return rc;
}

finch_status finch_chat_template_render(const finch_chat_template *t, const char *messages_json,
                                        const finch_chat_options *opts, char **out_text)
{
    if (!t || !messages_json || !out_text) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_chat_template_render: NULL argument");
    *out_text = NULL;
    cJSON *m = cJSON_Parse(messages_json);
    if (!m) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "chat messages are not valid JSON (near \"%.20s\")", cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "");
    jinja_result res;
    int rc = chat_render_cjson(t, m, opts, &res);
    cJSON_Delete(m);
    if (rc) return rc;
    free(res.spans);
    *out_text = res.text;
    return FINCH_OK;
}
