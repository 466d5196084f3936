/* Internals of chat templates shared with the label builder. */
#ifndef FINCH_CORE_CHAT_TEMPLATE_H
#define FINCH_CORE_CHAT_TEMPLATE_H

#include "core/jinja.h"
#include "finch/data.h"

#include <cjson/cJSON.h>

struct finch_chat_template {
    jinja_template *jt;
};

/* Renders messages (a cJSON array owned by the caller). res->text and res->spans are malloc'd. */
int chat_render_cjson(const finch_chat_template *t, const cJSON *messages, const finch_chat_options *opts, jinja_result *res);

/* The Jinja source of a built-in template (NULL if there is none of that name), e.g. to write it into a
 * tokenizer_config.json. */
const char *chat_template_builtin_source(const char *name);

#endif
