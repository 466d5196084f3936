/* GGUF files from finch run in real llama.cpp (node-llama-cpp's prebuilt CPU binaries):
 *  - f32 and f16: llama.cpp's greedy continuation of a prompt equals finch's, for each architecture
 *    llama.cpp supports among ours, with real tokenizers (byte-level BPE and SentencePiece-style);
 *  - q8_0, q4_0, q4_K_M, q5_K_M, q6_K: llama.cpp's next-token probabilities at every prompt position
 *    stay within each format's expected error of finch running the file's dequantised weights.
 * Skipped (exit 77) when node or node-llama-cpp is absent; the package is looked for in
 * $FINCH_NODE_LLAMA_DIR, else <build>/node-llama (npm i -E --prefix DIR node-llama-cpp@3.21.1). */
#include "finch/export.h"
#include "finch/finch.h"
#include "tests/export_models.h"

#include <unistd.h>

static char node_dir[4096], script[4096];

static int find_llama_cpp(void)
{
    const char *d = getenv("FINCH_NODE_LLAMA_DIR"), *bin = getenv("FINCH_BIN_DIR");
    if (d && *d) snprintf(node_dir, sizeof node_dir, "%s", d);
    else snprintf(node_dir, sizeof node_dir, "%s/../node-llama", bin && *bin ? bin : ".");
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/node_modules/node-llama-cpp/package.json", node_dir);
    if (access(probe, R_OK)) {
        printf("skip: node-llama-cpp not found in %s (npm i -E --prefix DIR node-llama-cpp@3.21.1; FINCH_NODE_LLAMA_DIR=DIR)\n", node_dir);
        return 0;
    }
    if (system("node --version > /dev/null 2>&1")) {
        printf("skip: node is not installed\n");
        return 0;
    }
    snprintf(script, sizeof script, "%s", __FILE__);
    char *slash = strrchr(script, '/');
    snprintf(slash ? slash + 1 : script, sizeof script - (size_t)(slash ? slash + 1 - script : 0), "llamacpp/run_llama.mjs");
    return 1;
}

static int64_t argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* finch's greedy continuation: a full forward per new token. */
static int finch_greedy(finch_model *m, int64_t V, const int32_t *prompt, size_t n, int steps, int32_t *out)
{
    int32_t ids[256];
    memcpy(ids, prompt, n * sizeof *ids);
    float *logits = malloc((n + (size_t)steps) * (size_t)V * sizeof(float));
    int rc = logits ? 0 : 1;
    for (int s = 0; s < steps && !rc; s++) {
        size_t T = n + (size_t)s;
        finch_batch b = {.batch = 1, .seq_len = (int64_t)T, .input_ids = ids};
        finch_step_options so = {1, 0};
        finch_step_result r;
        rc = finch_forward(m, &b, &so, &r) || finch_model_logits(m, logits, T * (size_t)V);
        if (!rc) out[s] = ids[T] = (int32_t)argmax(logits + (T - 1) * (size_t)V, V);
    }
    free(logits);
    return rc;
}

static void print_ids(const char *label, const int32_t *ids, int n)
{
    fprintf(stderr, "  %s:", label);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

static int prompt_ids(const char *model_dir, int32_t *ids, size_t max)
{
    finch_tokenizer *tok = NULL;
    finch_tokens t = {0};
    const char *text = "The quick brown fox jumps over the lazy dog, and then";
    int rc = finch_tokenizer_load(model_dir, &tok) || finch_tokenizer_encode(tok, text, strlen(text), FINCH_ENCODE_ADD_SPECIAL, &t);
    size_t n = rc ? 0 : t.len < max ? t.len : max;
    if (n) memcpy(ids, t.ids, n * sizeof *ids);
    finch_tokens_free(&t);
    finch_tokenizer_free(tok);
    return (int)n;
}

#define STEPS 10
#define TOP 8
#define MAX_JOBS 32

/* One llama.cpp run and what finch computed for it. */
typedef struct job {
    char what[96], gguf[4200];
    int greedy;                  /* 1: greedy continuation; 0: next-token probabilities */
    int32_t prompt[64];
    int n;
    int64_t V;
    int32_t finch_ids[STEPS];
    float *p_deq, *p_orig;       /* softmax at every prompt position: the file's weights, the original model */
    double tol;
} job;

static job jobs[MAX_JOBS];
static int n_jobs;

static int softmax_rows(finch_model *m, const int32_t *prompt, int n, int64_t V, float **out)
{
    float *x = malloc((size_t)n * (size_t)V * sizeof(float));
    finch_batch b = {.batch = 1, .seq_len = n, .input_ids = prompt};
    finch_step_options so = {1, 0};
    finch_step_result r;
    if (!x || finch_forward(m, &b, &so, &r) || finch_model_logits(m, x, (size_t)n * (size_t)V)) {
        free(x);
        return 1;
    }
    for (int t = 0; t < n; t++) {
        float *row = x + (size_t)t * (size_t)V;
        double mx = row[argmax(row, V)], sum = 0;
        for (int64_t v = 0; v < V; v++) sum += exp((double)row[v] - mx);
        for (int64_t v = 0; v < V; v++) row[v] = (float)(exp((double)row[v] - mx) / sum);
    }
    *out = x;
    return 0;
}

/* Exports the model in each type and queues the llama.cpp runs with finch's side computed. */
static void queue_model(finch_runtime *rt, const char *model_dir, const char *label, const finch_gguf_type *types, int n_types)
{
    finch_model *m = NULL;
    int rc = finch_model_load(rt, model_dir, NULL, &m);
    CHECK(rc == 0, "%s: load: %s", label, finch_last_error());
    if (rc) return;
    finch_model_info info;
    finch_model_info_get(m, &info);
    int32_t prompt[64];
    int n = prompt_ids(model_dir, prompt, 64);
    CHECK(n > 4, "%s: prompt has %d tokens", label, n);
    for (int i = 0; i < n_types && n_jobs + 2 <= MAX_JOBS; i++) {
        char gguf[4200];
        snprintf(gguf, sizeof gguf, "%s/model-%s.gguf", model_dir, finch_gguf_type_name(types[i]));
        finch_gguf_options o = finch_gguf_options_default();
        o.type = types[i];
        o.modelfile = 0;
        o.name = "finch test model";  /* llama.cpp special-cases some names ("phi3") */
        rc = finch_export_gguf(m, gguf, &o);
        CHECK(rc == 0, "%s %s: export: %s", label, finch_gguf_type_name(types[i]), finch_last_error());
        finch_model *deq = NULL;
        if (!rc && types[i] != FINCH_GGUF_F32) {
            rc = finch_gguf_rebuild(m, gguf, &deq);
            CHECK(rc == 0, "%s: rebuild: %s", gguf, finch_last_error());
        }
        finch_model *ref = deq ? deq : m;  /* finch's reference: the file's own (dequantised) weights */
        int quantised = types[i] != FINCH_GGUF_F32 && types[i] != FINCH_GGUF_F16;
        for (int greedy = quantised ? 0 : 1; !rc && greedy >= (types[i] == FINCH_GGUF_F32 ? 1 : 0); greedy--) {
            job *j = &jobs[n_jobs++];
            memset(j, 0, sizeof *j);
            snprintf(j->what, sizeof j->what, "%s %s", label, finch_gguf_type_name(types[i]));
            snprintf(j->gguf, sizeof j->gguf, "%s", gguf);
            memcpy(j->prompt, prompt, sizeof prompt);
            j->n = n;
            j->V = info.vocab_size;
            j->greedy = greedy;
            /* bounds on next-token probabilities: llama.cpp also rounds activations (f16 for f16 weights,
               8-bit blocks for quantised ones), on top of each format's weight error */
            j->tol = types[i] == FINCH_GGUF_F16 ? 0.01 : types[i] == FINCH_GGUF_Q8_0 ? 0.05 : types[i] == FINCH_GGUF_Q6_K ? 0.06
                   : types[i] == FINCH_GGUF_Q5_K_M ? 0.08 : 0.12;
            rc = greedy ? finch_greedy(ref, j->V, prompt, (size_t)n, STEPS, j->finch_ids)
                        : softmax_rows(ref, prompt, n, j->V, &j->p_deq) || softmax_rows(m, prompt, n, j->V, &j->p_orig);
            CHECK(rc == 0, "%s: finch: %s", j->what, finch_last_error());
        }
        finch_model_free(deq);
    }
    finch_model_free(m);
}

/* Runs every queued job in one node process; returns the parsed output lines by job. */
static int run_jobs(cJSON **results)
{
    char jobs_path[4200], cmd[16384];
    snprintf(jobs_path, sizeof jobs_path, "%s/llamacpp-jobs.json", testing_tmp_dir());
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < n_jobs; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "mode", jobs[i].greedy ? "greedy" : "probs");
        cJSON_AddStringToObject(o, "model", jobs[i].gguf);
        cJSON_AddNumberToObject(o, "count", jobs[i].greedy ? STEPS : TOP);
        cJSON_AddItemToObject(o, "ids", cJSON_CreateIntArray(jobs[i].prompt, jobs[i].n));
        cJSON_AddItemToArray(arr, o);
    }
    char *text = cJSON_PrintUnformatted(arr);
    cJSON_Delete(arr);
    int rc = !text || finch_write_text_atomic(jobs_path, text);
    cJSON_free(text);
    if (rc) return 1;
    snprintf(cmd, sizeof cmd, "FINCH_NODE_LLAMA_DIR='%s' node '%s' '%s' 2>&1", node_dir, script, jobs_path);
    FILE *p = popen(cmd, "r");
    if (!p) return 1;
    char *line = NULL;
    size_t len = 0;
    while (getline(&line, &len, p) > 0) {
        cJSON *j = line[0] == '{' ? cJSON_Parse(line) : NULL;
        const cJSON *k = j ? cJSON_GetObjectItem(j, "job") : NULL;
        if (cJSON_IsNumber(k) && k->valueint >= 0 && k->valueint < n_jobs) {
            cJSON_Delete(results[k->valueint]);
            results[k->valueint] = j;
        } else {
            cJSON_Delete(j);
            fprintf(stderr, "llama.cpp: %s", line);
        }
    }
    free(line);
    int status = pclose(p);
    remove(jobs_path);
    return status != 0;
}

static void check_greedy(const job *j, const cJSON *out)
{
    int32_t theirs[STEPS] = {0};
    const cJSON *ids = cJSON_GetObjectItem(out, "ids");
    int k = 0;
    for (const cJSON *e = ids ? ids->child : NULL; e && k < STEPS; e = e->next) theirs[k++] = (int32_t)e->valuedouble;
    int same = k == STEPS && !memcmp(j->finch_ids, theirs, sizeof theirs);
    CHECK(same, "%s: llama.cpp's greedy continuation differs from finch's", j->what);
    if (!same) {
        print_ids("finch    ", j->finch_ids, STEPS);
        print_ids("llama.cpp", theirs, k);
    } else {
        printf("%-26s llama.cpp greedy == finch greedy (%d tokens)\n", j->what, STEPS);
    }
}

static void check_probs(const job *j, const cJSON *out)
{
    const cJSON *top = cJSON_GetObjectItem(out, "top");
    double worst = 0, l1_deq = 0, l1_orig = 0;
    int pos = 0, agree = 0;
    for (const cJSON *row = top ? top->child : NULL; row && pos < j->n; row = row->next, pos++) {
        const float *pd = j->p_deq + (size_t)pos * (size_t)j->V, *po = j->p_orig + (size_t)pos * (size_t)j->V;
        int first = 1;
        for (const cJSON *pair = row->child; pair; pair = pair->next, first = 0) {
            int id = (int)pair->child->valuedouble;
            double p = pair->child->next->valuedouble;
            if (fabs(p - pd[id]) > worst) worst = fabs(p - pd[id]);
            l1_deq += fabs(p - pd[id]);
            l1_orig += fabs(p - po[id]);
            if (first) agree += id == argmax(pd, j->V);
        }
    }
    CHECK(pos == j->n, "%s: llama.cpp gave %d positions, expected %d", j->what, pos, j->n);
    CHECK(worst <= j->tol, "%s: next-token probabilities differ by %.4f (bound %.3f)", j->what, worst, j->tol);
    /* llama.cpp reads the blocks as finch does: its output is nearer finch on the dequantised file than
       finch on the weights before quantisation */
    CHECK(l1_deq < l1_orig, "%s: llama.cpp is nearer the unquantised model (%.3f) than the file's weights (%.3f)", j->what, l1_orig, l1_deq);
    printf("%-26s max |p_llama.cpp - p_finch| %.4f (bound %.2f), top-1 agrees at %d/%d; summed |diff| to finch on this file "
           "%.3f, to the unquantised model %.3f\n", j->what, worst, j->tol, agree, j->n, l1_deq, l1_orig);
}

int main(void)
{
    if (!find_llama_cpp()) return 77;
    finch_runtime *rt = NULL;
    if (finch_runtime_open("cpu", &rt)) {
        fprintf(stderr, "runtime: %s\n", finch_last_error());
        return 1;
    }
    char tok[3][4096], dir[4096];
    const char *tok_names[3] = {"llama3", "llama2", "qwen3"};
    for (int i = 0; i < 3; i++) snprintf(tok[i], sizeof tok[i], "%s/tokenizers/%s", testing_shared_dir(), tok_names[i]);
    /* every architecture, shaped like its golden, with a real tokenizer; sliding windows wider than the prompt */
    static const struct { const char *arch; int tok; } archs[] = {
        {"llama", 0}, {"qwen2", 1}, {"qwen3", 2}, {"gemma", 1}, {"gemma2", 1}, {"gemma3", 1}, {"phi3", 1}, {"falcon", 1}, {"mistral", 1},
    };
    const finch_gguf_type f32 = FINCH_GGUF_F32, f32_f16[] = {FINCH_GGUF_F32, FINCH_GGUF_F16};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        snprintf(dir, sizeof dir, "%s/llamacpp-%s", testing_tmp_dir(), archs[i].arch);
        int rc = make_golden_shaped_model(dir, archs[i].arch, tok[archs[i].tok], "{\"sliding_window\": 4096}", 1000 + i);
        CHECK(rc == 0, "%s: cannot make the test model in %s", archs[i].arch, dir);
        char label[64];
        snprintf(label, sizeof label, "%s/%s", archs[i].arch, tok_names[archs[i].tok]);
        if (!rc) queue_model(rt, dir, label, i == 0 ? f32_f16 : &f32, i == 0 ? 2 : 1);
    }
    /* every quantised type on a llama whose rows fill K-quant blocks (hidden 256, ffn 512) */
    snprintf(dir, sizeof dir, "%s/llamacpp-llama256", testing_tmp_dir());
    int rc = make_llama_model(dir, tok[1], 256, 512, 4, 2, 2, 77);
    CHECK(rc == 0, "cannot make the hidden-256 llama in %s", dir);
    const finch_gguf_type quant[] = {FINCH_GGUF_F16, FINCH_GGUF_Q8_0, FINCH_GGUF_Q6_K, FINCH_GGUF_Q5_K_M, FINCH_GGUF_Q4_K_M, FINCH_GGUF_Q4_0};
    if (!rc) queue_model(rt, dir, "llama-256/llama2", quant, (int)(sizeof quant / sizeof quant[0]));
    finch_runtime_close(rt);

    cJSON *results[MAX_JOBS] = {0};
    rc = run_jobs(results);
    CHECK(rc == 0, "the llama.cpp runs failed");
    for (int i = 0; i < n_jobs; i++) {
        const cJSON *err = results[i] ? cJSON_GetObjectItem(results[i], "error") : NULL;
        CHECK(results[i] && !err, "%s: llama.cpp: %s", jobs[i].what, err && cJSON_IsString(err) ? err->valuestring : "no output");
        if (results[i] && !err) {
            if (jobs[i].greedy) check_greedy(&jobs[i], results[i]);
            else check_probs(&jobs[i], results[i]);
        }
        cJSON_Delete(results[i]);
        free(jobs[i].p_deq);
        free(jobs[i].p_orig);
        remove(jobs[i].gguf);
    }
    return testing_finish();
}
