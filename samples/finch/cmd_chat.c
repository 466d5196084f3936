/* finch chat: an interactive conversation with a model through its chat template, the reply streamed
 * as it is generated. Each turn's prompt is the whole conversation; the session's cache keeps what the
 * previous turns computed, so only the new part is processed. /reset starts over, /quit (or end of
 * input) leaves; Ctrl-C while a reply is being written cuts it short.
 *
 *   finch chat --model DIR [--adapter DIR] [--template NAME] [--system TEXT] [--image PATH]... [sampling options]
 *
 * Vision-language models: the --image files go with the first user message of each conversation. */
#include "samples/finch/chat_images.h"
#include "samples/finch/commands.h"
#include "samples/finch/gen_setup.h"

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int stream_reply(void *user, int seq, int32_t token, const char *text, size_t len)
{
    (void)user;
    (void)seq;
    (void)token;
    if (len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return interrupted;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: finch chat --model DIR [--adapter DIR] [--template NAME] [--system TEXT] [--image PATH]... [options]\n"
               "Type a message and Enter; /reset forgets the conversation, /quit leaves.\n"
               "Vision-language models: each --image goes with the first message of the conversation.\n%s",
            gen_setup_usage);
}

static void add_message(cJSON *msgs, const char *role, const char *content)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", role);
    cJSON_AddStringToObject(m, "content", content);
    cJSON_AddItemToArray(msgs, m);
}

/* One turn: the reply to the conversation in msgs, streamed, then added to it. */
static int reply(gen_setup *g, const chat_images *ci, finch_session *s, cJSON *msgs)
{
    char *json = cJSON_PrintUnformatted(msgs);
    finch_tokens ids = {0};
    int rc = json ? gen_encode_chat(g, json, &ids) : 1;
    if (!rc) rc = chat_images_expand(ci, g, &ids);
    free(json);
    if (rc) {
        finch_tokens_free(&ids);
        return 1;
    }
    const int32_t *p = ids.ids;
    int64_t len = (int64_t)ids.len;
    finch_generation out;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    interrupted = 0;
    sigaction(SIGINT, &sa, &old);
    rc = finch_session_generate(s, 1, &p, &len, &g->opts, &out);
    sigaction(SIGINT, &old, NULL);
    finch_tokens_free(&ids);
    if (rc && rc != FINCH_ERR_CANCELLED) {
        fprintf(stderr, "\n%s: %s\n", g->cmd, finch_last_error());
        /* The turn is dropped: the user message stays unanswered only until the next /reset. */
        cJSON_DeleteItemFromArray(msgs, cJSON_GetArraySize(msgs) - 1);
        return 0;
    }
    putchar('\n');
    if (out.finish == FINCH_FINISH_LENGTH || out.finish == FINCH_FINISH_CONTEXT || out.finish == FINCH_FINISH_CANCELLED)
        fprintf(stderr, "[reply cut short: %s]\n", gen_finish_name(out.finish));
    add_message(msgs, "assistant", out.text ? out.text : "");
    finch_generation_free(&out);
    return 0;
}

int finch_cmd_chat(int argc, char **argv)
{
    gen_setup g;
    chat_images ci;
    memset(&ci, 0, sizeof ci);
    gen_setup_init(&g, "finch chat");
    for (int i = 1; i < argc; i++) {
        int taken = gen_setup_option(&g, argc, argv, &i);
        if (!taken) taken = chat_images_option(&ci, g.cmd, argc, argv, &i);
        if (taken < 0) return 2;
        if (taken) continue;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        fprintf(stderr, "finch chat: unknown or incomplete argument '%s'\n", argv[i]);
        usage(stderr);
        return 2;
    }
    if (!g.model) {
        fprintf(stderr, "finch chat: --model is required\n");
        usage(stderr);
        return 2;
    }
    finch_session *s = NULL;
    cJSON *msgs = cJSON_CreateArray();
    int rc = gen_setup_open(&g, 1);
    if (!rc) rc = chat_images_open(&ci, &g);
    if (!rc && finch_session_create(g.m, 1, &s)) {
        fprintf(stderr, "finch chat: %s\n", finch_last_error());
        rc = 1;
    }
    g.opts.on_token = stream_reply;
    int tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t cap = 0;
    while (!rc && msgs) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (!n) continue;
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) break;
        if (!strcmp(line, "/reset")) {
            cJSON_Delete(msgs);
            msgs = cJSON_CreateArray();
            finch_session_reset(s);
            fputs("[conversation reset]\n", stderr);
            continue;
        }
        char *first = ci.n && cJSON_GetArraySize(msgs) == 0 ? chat_images_message(&ci, line) : NULL;
        add_message(msgs, "user", first ? first : line);
        free(first);
        rc = reply(&g, &ci, s, msgs);
    }
    free(line);
    cJSON_Delete(msgs);
    finch_session_free(s);
    chat_images_close(&ci);
    gen_setup_close(&g);
    return rc;
}
