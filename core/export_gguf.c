/* finch_export_gguf / finch_export_gguf_lora: the plan of gguf_model.c written through the streaming
 * writer, tensor by tensor, plus an Ollama Modelfile beside a model file. */
#include "core/error.h"
#include "core/files.h"
#include "core/gguf_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const type_names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_K_M", "q5_K_M", "q6_K"};

const char *finch_gguf_type_name(finch_gguf_type t)
{
    return (unsigned)t < sizeof type_names / sizeof type_names[0] ? type_names[t] : "?";
}

finch_status finch_gguf_type_parse(const char *name, finch_gguf_type *out)
{
    for (size_t i = 0; name && i < sizeof type_names / sizeof type_names[0]; i++)
        if (!strcasecmp(name, type_names[i])) {
            *out = (finch_gguf_type)i;
            return FINCH_OK;
        }
    return finch_error(FINCH_ERR_INVALID_ARGUMENT, "unknown GGUF type '%s' (f32, f16, bf16, q8_0, q4_0, q4_K_M, q5_K_M, q6_K)",
                       name ? name : "(null)");
}

finch_gguf_options finch_gguf_options_default(void)
{
    finch_gguf_options o = {FINCH_GGUF_F16, NULL, NULL, 1};
    return o;
}

/* Declares every tensor of the plan, then streams each one: values, quantised, written. */
static int write_tensors(const finch_model *m, const gguf_plan *p, gguf_writer *w, const char *path)
{
    int rc = FINCH_OK;
    for (int i = 0; !rc && i < p->n; i++) {
        const gguf_plan_tensor *t = &p->t[i];
        int64_t ne[2] = {t->n_dims == 1 ? t->rows : t->cols, t->rows};
        rc = gguf_add_tensor(w, t->name, t->type, t->n_dims, ne);
    }
    if (!rc) rc = gguf_write_begin(w, path);
    for (int i = 0; !rc && i < p->n; i++) {
        const gguf_plan_tensor *t = &p->t[i];
        int64_t n = t->rows * t->cols;
        size_t bytes = gguf_row_bytes(t->type, n);
        float *values = malloc((size_t)n * sizeof(float) + 1);
        void *blocks = malloc(bytes + 1);
        if (!values || !blocks) rc = finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory for tensor %s", t->name);
        if (!rc) rc = gguf_plan_values(m, t, values);
        if (!rc) {
            gguf_quantize(t->type, values, n, blocks);
            rc = gguf_write_tensor(w, blocks, bytes);
        }
        free(values);
        free(blocks);
    }
    if (!rc) rc = gguf_write_end(w);
    return rc;
}

/* ---- Ollama Modelfile ------------------------------------------------------------------------------- */

typedef struct ollama_template {
    const char *marker;      /* a string the chat template contains */
    const char *go_template; /* the same format as an Ollama (Go) template */
    const char *stop;
} ollama_template;

static const ollama_template ollama_templates[] = {
    {"<|im_start|>",
     "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n", "<|im_end|>"},
    {"<|start_header_id|>",
     "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
     "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"},
    {"<start_of_turn>",
     "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}{{ .Role }}{{ end }}\n"
     "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n", "<end_of_turn>"},
    {"<|end|>", "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n", "<|end|>"},
    {"[INST]",
     "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]{{ else if eq .Role \"assistant\" }}"
     "{{ .Content }}</s>{{ end }}{{ end }}", "[INST]"},
};

static int append(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        size_t c = (*len + n + 1) * 2;
        char *p = realloc(*buf, c);
        if (!p) return finch_error(FINCH_ERR_OUT_OF_MEMORY, "out of host memory");
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
    return FINCH_OK;
}

static int quoted_stop(char **buf, size_t *len, size_t *cap, const char *stop)
{
    int rc = append(buf, len, cap, "PARAMETER stop \"");
    for (const char *s = stop; !rc && *s; s++) {
        char c[3] = {*s, 0, 0};
        if (*s == '"' || *s == '\\') c[0] = '\\', c[1] = *s;
        rc = append(buf, len, cap, c);
    }
    return rc ? rc : append(buf, len, cap, "\"\n");
}

static int modelfile_text(const char *gguf_name, const gguf_vocab_info *vi, char **out)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = append(&buf, &len, &cap, "# Ollama Modelfile written by finch: ollama create NAME -f THIS_FILE\nFROM ./");
    if (!rc) rc = append(&buf, &len, &cap, gguf_name);
    if (!rc) rc = append(&buf, &len, &cap, "\n");
    const ollama_template *t = NULL;
    for (size_t i = 0; vi->chat_template && i < sizeof ollama_templates / sizeof ollama_templates[0] && !t; i++)
        if (strstr(vi->chat_template, ollama_templates[i].marker)) t = &ollama_templates[i];
    if (!rc && t) {
        rc = append(&buf, &len, &cap, "TEMPLATE \"\"\"");
        if (!rc) rc = append(&buf, &len, &cap, t->go_template);
        if (!rc) rc = append(&buf, &len, &cap, "\"\"\"\n");
        if (!rc) rc = quoted_stop(&buf, &len, &cap, t->stop);
    } else if (!rc) {
        rc = append(&buf, &len, &cap, vi->chat_template ? "# The chat template has no Ollama equivalent here; Ollama reads tokenizer.chat_template from the GGUF.\n"
                                                        : "# The tokenizer has no chat template: a plain completion model.\n");
    }
    if (!rc && vi->eos_token && (!t || strcmp(vi->eos_token, t->stop))) rc = quoted_stop(&buf, &len, &cap, vi->eos_token);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    return FINCH_OK;
}

/* "<dir>/<stem>.Modelfile" for "<dir>/<stem>.gguf". */
static void modelfile_path(const char *gguf_path, char *out, size_t size)
{
    size_t n = strlen(gguf_path);
    if (n > 5 && !strcasecmp(gguf_path + n - 5, ".gguf")) n -= 5;
    snprintf(out, size, "%.*s.Modelfile", (int)n, gguf_path);
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ---- entry points ------------------------------------------------------------------------------------ */

finch_status finch_export_gguf(const finch_model *m, const char *path, const finch_gguf_options *opts)
{
    if (!m || !path) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_export_gguf: NULL argument");
    finch_gguf_options o = opts ? *opts : finch_gguf_options_default();
    if ((unsigned)o.type >= sizeof type_names / sizeof type_names[0])
        return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_export_gguf: unknown type %d", (int)o.type);
    gguf_plan plan;
    int rc = gguf_plan_model(m, o.type, &plan);
    if (rc) return rc;
    gguf_writer *w = NULL;
    gguf_vocab_info vi = {0};
    finch_staged staged = {0};
    const char *tmp;
    char name[1100];
    snprintf(name, sizeof name, "%s", o.name ? o.name : base_name(m->dir));
    if ((rc = gguf_writer_new(&w))) goto done;
    if ((rc = gguf_plan_keys(m, &plan, o.type, name, w))) goto done;
    if ((rc = gguf_vocab_keys(o.tokenizer_dir ? o.tokenizer_dir : m->dir, m->cfg.vocab, w, &vi))) goto done;
    if ((rc = finch_stage(&staged, path, &tmp))) goto done;
    if ((rc = write_tensors(m, &plan, w, tmp))) goto done;
    if (o.modelfile) {
        char mpath[4200], *text = NULL;
        modelfile_path(path, mpath, sizeof mpath);
        if (!(rc = modelfile_text(base_name(path), &vi, &text)) && !(rc = finch_stage(&staged, mpath, &tmp)))
            rc = finch_write_text_atomic(tmp, text);
        free(text);
    }
    if (!rc) rc = finch_stage_commit(&staged);
done:
    if (rc) finch_stage_abort(&staged);
    gguf_writer_free(w);
    gguf_vocab_info_free(&vi);
    gguf_plan_free(&plan);
    return rc ? finch_error_prefix(rc, "exporting %s: ", path) : FINCH_OK;
}

finch_status finch_export_gguf_lora(const finch_model *m, const char *path, finch_gguf_type type)
{
    if (!m || !path) return finch_error(FINCH_ERR_INVALID_ARGUMENT, "finch_export_gguf_lora: NULL argument");
    gguf_plan plan;
    int rc = gguf_plan_adapter(m, type, &plan);
    if (rc) return rc;
    gguf_writer *w = NULL;
    finch_staged staged = {0};
    const char *tmp;
    if (!(rc = gguf_writer_new(&w)) && !(rc = gguf_plan_keys(m, &plan, type, NULL, w)) && !(rc = finch_stage(&staged, path, &tmp)) &&
        !(rc = write_tensors(m, &plan, w, tmp)))
        rc = finch_stage_commit(&staged);
    if (rc) finch_stage_abort(&staged);
    gguf_writer_free(w);
    gguf_plan_free(&plan);
    return rc ? finch_error_prefix(rc, "exporting %s: ", path) : FINCH_OK;
}
