/* Built-in chat templates for models whose tokenizer_config.json has none. Each is the Jinja source of
 * the template the model family documents (system prompts folded in where the family has no system role). */
#include "core/chat_template.h"
#include "core/error.h"
#include "finch/data.h"

#include <string.h>

static const struct { const char *name, *source; } BUILTIN[] = {
    {"chatml",
        "{%- for message in messages %}\n"
        "    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"},
    {"llama-3",
        "{{- bos_token }}\n"
        "{%- for message in messages %}\n"
        "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
        "{%- endif %}\n"},
    {"mistral",
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {%- set system_message = messages[0]['content'] %}\n"
        "    {%- set loop_messages = messages[1:] %}\n"
        "{%- else %}\n"
        "    {%- set loop_messages = messages %}\n"
        "{%- endif %}\n"
        "{{- bos_token }}\n"
        "{%- for message in loop_messages %}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
        "        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
        "    {%- endif %}\n"
        "    {%- if message['role'] == 'user' %}\n"
        "        {%- if loop.first and system_message is defined %}\n"
        "            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
        "        {%- else %}\n"
        "            {{- '[INST] ' + message['content'] + ' [/INST]' }}\n"
        "        {%- endif %}\n"
        "    {%- elif message['role'] == 'assistant' %}\n"
        "        {{- ' ' + message['content'] + eos_token }}\n"
        "    {%- else %}\n"
        "        {{- raise_exception('Only system, user and assistant roles are supported!') }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"},
    {"gemma",
        "{{- bos_token }}\n"
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}\n"
        "    {%- set loop_messages = messages[1:] %}\n"
        "{%- else %}\n"
        "    {%- set first_user_prefix = '' %}\n"
        "    {%- set loop_messages = messages %}\n"
        "{%- endif %}\n"
        "{%- for message in loop_messages %}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
        "        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
        "    {%- endif %}\n"
        "    {%- if message['role'] == 'assistant' %}\n"
        "        {%- set role = 'model' %}\n"
        "    {%- else %}\n"
        "        {%- set role = message['role'] %}\n"
        "    {%- endif %}\n"
        "    {{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<start_of_turn>model\\n' }}\n"
        "{%- endif %}\n"},
    {"qwen2.5",
        "{%- if tools %}\n"
        "    {{- '<|im_start|>system\\n' }}\n"
        "    {%- if messages[0]['role'] == 'system' %}\n"
        "        {{- messages[0]['content'] }}\n"
        "    {%- else %}\n"
        "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
        "    {%- endif %}\n"
        "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
        "    {%- for tool in tools %}\n"
        "        {{- \"\\n\" }}\n"
        "        {{- tool | tojson }}\n"
        "    {%- endfor %}\n"
        "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
        "{%- else %}\n"
        "    {%- if messages[0]['role'] == 'system' %}\n"
        "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "    {%- else %}\n"
        "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
        "    {%- elif message.role == \"assistant\" %}\n"
        "        {{- '<|im_start|>' + message.role }}\n"
        "        {%- if message.content %}\n"
        "            {{- '\\n' + message.content }}\n"
        "        {%- endif %}\n"
        "        {%- for tool_call in message.tool_calls %}\n"
        "            {%- if tool_call.function is defined %}\n"
        "                {%- set tool_call = tool_call.function %}\n"
        "            {%- endif %}\n"
        "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
        "            {{- tool_call.name }}\n"
        "            {{- '\", \"arguments\": ' }}\n"
        "            {{- tool_call.arguments | tojson }}\n"
        "            {{- '}\\n</tool_call>' }}\n"
        "        {%- endfor %}\n"
        "        {{- '<|im_end|>\\n' }}\n"
        "    {%- elif message.role == \"tool\" %}\n"
        "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
        "            {{- '<|im_start|>user' }}\n"
        "        {%- endif %}\n"
        "        {{- '\\n<tool_response>\\n' }}\n"
        "        {{- message.content }}\n"
        "        {{- '\\n</tool_response>' }}\n"
        "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
        "            {{- '<|im_end|>\\n' }}\n"
        "        {%- endif %}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"},
    {"phi-3",
        "{%- for message in messages %}\n"
        "    {%- if message['role'] == 'system' %}\n"
        "        {{- '<|system|>\\n' + message['content'] + '<|end|>\\n' }}\n"
        "    {%- elif message['role'] == 'user' %}\n"
        "        {{- '<|user|>\\n' + message['content'] + '<|end|>\\n' }}\n"
        "    {%- elif message['role'] == 'assistant' %}\n"
        "        {{- '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|assistant|>\\n' }}\n"
        "{%- else %}\n"
        "    {{- eos_token }}\n"
        "{%- endif %}\n"},
    {"alpaca",
        "{{- bos_token }}\n"
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {{- messages[0]['content'] + '\\n\\n' }}\n"
        "    {%- set loop_messages = messages[1:] %}\n"
        "{%- else %}\n"
        "    {{- 'Below are some instructions that describe some tasks. Write responses that appropriately complete each request.\\n\\n' }}\n"
        "    {%- set loop_messages = messages %}\n"
        "{%- endif %}\n"
        "{%- for message in loop_messages %}\n"
        "    {%- if message['role'] == 'user' %}\n"
        "        {{- '### Instruction:\\n' + message['content'] + '\\n\\n' }}\n"
        "    {%- elif message['role'] == 'assistant' %}\n"
        "        {{- '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}\n"
        "    {%- else %}\n"
        "        {{- raise_exception('Only system, user and assistant roles are supported!') }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '### Response:\\n' }}\n"
        "{%- endif %}\n"},
};

static const char *const NAMES[] = {"chatml", "llama-3", "mistral", "gemma", "qwen2.5", "phi-3", "alpaca", NULL};

const char *const *finch_chat_template_builtin_names(void) { return NAMES; }

finch_status finch_chat_template_builtin(const char *name, finch_chat_template **out)
{
    if (!name || !out) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_chat_template_builtin: NULL argument");
    for (size_t i = 0; i < sizeof BUILTIN / sizeof BUILTIN[0]; i++)
        if (!strcmp(BUILTIN[i].name, name)) return finch_chat_template_parse(BUILTIN[i].source, BUILTIN[i].name, out);
    return finch_error(FINCH_ERR_INVALID_ARGUMENT,
                       "no built-in chat template named '%s' (chatml, llama-3, mistral, gemma, qwen2.5, phi-3, alpaca)", name);
}

const char *chat_template_builtin_source(const char *name)
{
    for (size_t i = 0; name && i < sizeof BUILTIN / sizeof BUILTIN[0]; i++)
        if (!strcmp(BUILTIN[i].name, name)) return BUILTIN[i].source;
    return NULL;
}
