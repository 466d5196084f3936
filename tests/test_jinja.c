/* The Jinja interpreter and chat templates: the tokenizers' own templates reproduce golden.json's
 * renderings byte for byte; a battery of language cases and every built-in template match Jinja2's
 * output; template errors are reported with their line. */
#include "core/jinja.h"
#include "finch/data.h"
#include "finch/finch.h"
#include "tests/jinja_cases.h"
#include "tests/testing.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void golden_chats(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/golden.json", testing_shared_dir());
    char *text = testing_read_file(path);
    CHECK(text != NULL, "cannot read %s", path);
    cJSON *root = cJSON_Parse(text ? text : "");
    free(text);
    for (const cJSON *t = root ? root->child : NULL; t; t = t->next) {
        const cJSON *chats = cJSON_GetObjectItem(t, "chats");
        if (!chats) continue;
        snprintf(path, sizeof path, "%s/tokenizers/%s", testing_shared_dir(), t->string);
        finch_tokenizer *tok = NULL;
        finch_chat_template *tpl = NULL;
        int rc = finch_tokenizer_load(path, &tok);
        CHECK(rc == FINCH_OK, "%s: %s", t->string, finch_last_error());
        if (rc == FINCH_OK) rc = finch_chat_template_from_tokenizer(tok, &tpl);
        CHECK(rc == FINCH_OK, "%s template: %s", t->string, finch_last_error());
        int ok_n = 0, n = 0;
        for (const cJSON *ch = chats->child; rc == FINCH_OK && ch; ch = ch->next, n++) {
            char *msgs = cJSON_PrintUnformatted(cJSON_GetObjectItem(ch, "messages"));
            finch_chat_options o = finch_chat_options_for(tok);
            o.add_generation_prompt = cJSON_IsTrue(cJSON_GetObjectItem(ch, "add_generation_prompt"));
            char *out = NULL;
            int r = finch_chat_template_render(tpl, msgs, &o, &out);
            const char *want = cJSON_GetObjectItem(ch, "text")->valuestring;
            int ok = r == FINCH_OK && out && strcmp(out, want) == 0;
            CHECK(ok, "%s chat %d: got\n%s\nwant\n%s", t->string, n, out ? out : finch_last_error(), want);
            finch_tokens ids = {0};
            if (ok) {
                r = finch_tokenizer_encode(tok, out, strlen(out), 0, &ids);
                const cJSON *ref = cJSON_GetObjectItem(ch, "ids");
                ok = r == FINCH_OK && (int)ids.len == cJSON_GetArraySize(ref);
                for (int i = 0; ok && i < (int)ids.len; i++) ok = ids.ids[i] == (int32_t)cJSON_GetArrayItem(ref, i)->valuedouble;
                CHECK(ok, "%s chat %d: ids differ", t->string, n);
            }
            ok_n += ok;
            finch_tokens_free(&ids);
            finch_data_free(out);
            free(msgs);
        }
        printf("%s: %d/%d chat templates render byte-identically and encode to Hugging Face's ids\n", t->string, ok_n, n);
        finch_chat_template_free(tpl);
        finch_tokenizer_free(tok);
    }
    cJSON_Delete(root);
}

static void language_cases(void)
{
    int ok_n = 0, n = (int)(sizeof JINJA_CASES / sizeof JINJA_CASES[0]);
    for (int i = 0; i < n; i++) {
        const struct jinja_case *c = &JINJA_CASES[i];
        char *err = NULL;
        jinja_template *t = jinja_parse(c->tpl, "case", &err);
        jinja_result r = {0};
        int failed = !t || jinja_render_json(t, c->vars, &r, &err);
        int ok = c->raises ? failed && err && strstr(err, "case:") : !failed && strcmp(r.text, c->expected) == 0;
        CHECK(ok, "jinja case %d: %s\n template: %s\n got: %s\n want: %s", i, err ? err : "", c->tpl, r.text ? r.text : "(error)",
              c->raises ? "(an error)" : c->expected);
        ok_n += ok;
        free(err);
        free(r.text);
        free(r.spans);
        jinja_template_free(t);
    }
    printf("jinja: %d/%d language cases match Jinja2\n", ok_n, n);
}

static void builtin_templates(void)
{
    int n = (int)(sizeof BUILTIN_CASES / sizeof BUILTIN_CASES[0]), ok_n = 0;
    for (int i = 0; i < n; i++) {
        const struct builtin_case *c = &BUILTIN_CASES[i];
        finch_chat_template *t = NULL;
        int rc = finch_chat_template_builtin(c->name, &t);
        CHECK(rc == FINCH_OK, "builtin %s: %s", c->name, finch_last_error());
        finch_chat_options o = finch_chat_options_default();
        o.bos_token = "<s>";
        o.eos_token = "</s>";
        o.add_generation_prompt = c->add_generation_prompt;
        char *out = NULL;
        if (rc == FINCH_OK) rc = finch_chat_template_render(t, c->messages, &o, &out);
        int ok = rc == FINCH_OK && strcmp(out, c->expected) == 0;
        CHECK(ok, "builtin %s (generation prompt %d): got\n%s\nwant\n%s", c->name, c->add_generation_prompt,
              out ? out : finch_last_error(), c->expected);
        ok_n += ok;
        finch_data_free(out);
        finch_chat_template_free(t);
    }
    printf("built-in templates: %d/%d renderings match Jinja2\n", ok_n, n);
    const char *const *names = finch_chat_template_builtin_names();
    int count = 0;
    while (names[count]) count++;
    CHECK(count == 7, "7 built-in templates, got %d", count);
}

static void errors(void)
{
    finch_chat_template *t = NULL;
    int rc = finch_chat_template_parse("line one\n{% if x %}\n{{ x + }}\n{% endif %}", "bad.jinja", &t);
    CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "bad.jinja:3"), "parse error names line 3: %s", finch_last_error());
    rc = finch_chat_template_parse("{% for x in y %}", "unclosed", &t);
    CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "endfor"), "unclosed for: %s", finch_last_error());
    rc = finch_chat_template_parse("{{ x | nosuchfilter }}", "f", &t);
    CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "nosuchfilter"), "unknown filter: %s", finch_last_error());

    rc = finch_chat_template_builtin("mistral", &t);
    CHECK(rc == FINCH_OK, "mistral: %s", finch_last_error());
    char *out = NULL;
    finch_chat_options o = finch_chat_options_default();
    rc = finch_chat_template_render(t, "[{\"role\":\"assistant\",\"content\":\"x\"}]", &o, &out);
    CHECK(rc == FINCH_ERR_FORMAT && strstr(finch_last_error(), "raised: Conversation roles must alternate"),
          "raise_exception reaches the caller: %s", finch_last_error());
    rc = finch_chat_template_render(t, "[{\"content\":\"x\"}]", &o, &out);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "role"), "missing role: %s", finch_last_error());
    rc = finch_chat_template_render(t, "[{\"role\":", &o, &out);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT, "bad JSON: %s", finch_last_error());
    finch_chat_template_free(t);
    rc = finch_chat_template_builtin("nope", &t);
    CHECK(rc == FINCH_ERR_INVALID_ARGUMENT && strstr(finch_last_error(), "chatml"), "unknown builtin: %s", finch_last_error());

    /* {% generation %} marks spans */
    char *err = NULL;
    jinja_template *jt = jinja_parse("a{% generation %}bc{% endgeneration %}d{% generation %}e{% endgeneration %}", "g", &err);
    jinja_result r = {0};
    int bad = !jt || jinja_render_json(jt, "{}", &r, &err);
    CHECK(!bad && r.n_spans == 2 && r.spans[0].start == 1 && r.spans[0].end == 3 && r.spans[1].start == 4 && r.spans[1].end == 5,
          "generation spans");
    free(r.text);
    free(r.spans);
    free(err);
    jinja_template_free(jt);
}

/* Deterministic mutation fuzzing: mutated templates must parse or fail cleanly, never crash (the ASan
 * build of the suite turns memory errors into failures). */
static void mutations(void)
{
    uint64_t s = 12345;
    int n = (int)(sizeof JINJA_CASES / sizeof JINJA_CASES[0]), rendered = 0, rejected = 0;
    static const char ALPHABET[] = "{}%#-+|.()[]'\"\n ax0,:=~!<>";
    for (int iter = 0; iter < 3000; iter++) {
        const struct jinja_case *c = &JINJA_CASES[iter % n];
        size_t len = strlen(c->tpl);
        char *m = malloc(len + 8);
        memcpy(m, c->tpl, len + 1);
        for (int k = 0; k < 1 + iter % 3; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = len ? (size_t)(s >> 33) % len : 0;
            int op = (int)((s >> 20) % 3);
            char ch = ALPHABET[(s >> 40) % (sizeof ALPHABET - 1)];
            if (op == 0 && len) m[at] = ch;
            else if (op == 1 && len) { memmove(m + at, m + at + 1, len - at); len--; }
            else { memmove(m + at + 1, m + at, len - at + 1); m[at] = ch; len++; }
        }
        char *err = NULL;
        jinja_template *t = jinja_parse(m, "fuzz", &err);
        jinja_result r = {0};
        if (t && !jinja_render_json(t, c->vars, &r, &err)) rendered++;
        else rejected++;
        free(r.text);
        free(r.spans);
        free(err);
        jinja_template_free(t);
        free(m);
    }
    CHECK(rendered + rejected == 3000, "fuzz");
    printf("jinja mutations: %d rendered, %d rejected with an error, none crashed\n", rendered, rejected);
}

int main(void)
{
    mutations();
    golden_chats();
    language_cases();
    builtin_templates();
    errors();
    return testing_finish();
}
