/* Packed rows (finch_batch.segment_ids) against the same conversations run one at a time, on the
 * llama golden model with its adapter, f32 CPU: every conversation's logits and loss agree, and
 * the adapter gradients of the packed batch equal the sum over the separate runs. */
#include "finch/data.h"
#include "finch/finch.h"
#include "tests/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_CONV 6
#define ROW 40

static int ok(int rc, const char *what)
{
    CHECK(rc == FINCH_OK, "%s: %s (%s)", what, finch_status_name(rc), finch_last_error());
    return rc == FINCH_OK;
}

static uint64_t rng = 12345;
static int32_t next_id(int32_t vocab)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((rng >> 33) % (uint64_t)vocab);
}

/* Conversations of different lengths; the first third of each is "prompt" (label -100). */
static void make_conversations(finch_example *ex, int32_t vocab)
{
    static const int lengths[N_CONV] = {9, 17, 5, 23, 12, 30};
    for (int c = 0; c < N_CONV; c++) {
        memset(&ex[c], 0, sizeof ex[c]);
        for (int t = 0; t < lengths[c]; t++) {
            int32_t id = next_id(vocab);
            finch_tokens *ids = &ex[c].ids, *lab = &ex[c].labels;
            if (ids->len == ids->cap) {
                ids->cap = ids->cap ? ids->cap * 2 : 32;
                ids->ids = realloc(ids->ids, ids->cap * sizeof(int32_t));
                lab->cap = ids->cap;
                lab->ids = realloc(lab->ids, lab->cap * sizeof(int32_t));
            }
            ids->ids[ids->len++] = id;
            lab->ids[lab->len++] = t < lengths[c] / 3 ? FINCH_LABEL_IGNORE : id;
        }
    }
}

static float *read_grads(finch_model *m, int64_t *total)
{
    int64_t n = finch_trainable_count(m), sum = 0;
    for (int64_t i = 0; i < n; i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        sum += ti.numel;
    }
    float *g = malloc((size_t)sum * sizeof(float)), *at = g;
    for (int64_t i = 0; i < n; i++) {
        finch_tensor_info ti;
        finch_trainable_info(m, i, &ti);
        finch_trainable_grad_read(m, i, at, ti.numel);
        at += ti.numel;
    }
    *total = sum;
    return g;
}

int main(void)
{
    char model_dir[1100], adapter_dir[1100];
    snprintf(model_dir, sizeof model_dir, "%s/golden/llama/model", testing_shared_dir());
    snprintf(adapter_dir, sizeof adapter_dir, "%s/golden/llama/adapter", testing_shared_dir());
    finch_runtime *rt = NULL;
    finch_model *m = NULL;
    finch_runtime_options ro = {"cpu", NULL, 1};
    if (!ok(finch_runtime_open_ex(&ro, &rt), "runtime") || !ok(finch_model_load(rt, model_dir, NULL, &m), "load") ||
        !ok(finch_lora_load(m, adapter_dir), "adapter"))
        return testing_finish();
    finch_model_info info;
    finch_model_info_get(m, &info);
    int64_t V = info.vocab_size;

    finch_example ex[N_CONV];
    make_conversations(ex, (int32_t)V);
    finch_pack_options po = {ROW, 1, 0, 0};
    finch_packed_batch pb;
    finch_pack_stats st;
    if (!ok(finch_pack_examples(ex, N_CONV, &po, &pb, &st), "pack")) return testing_finish();
    CHECK(pb.rows < N_CONV, "packing put %lld conversations in %lld rows", (long long)N_CONV, (long long)pb.rows);

    /* Where each conversation landed (row, offset): the packer fills first fit, in order. */
    int64_t where[N_CONV][2];
    {
        int64_t used[N_CONV] = {0};
        int64_t rows = 0;
        for (int c = 0; c < N_CONV; c++) {
            int64_t len = (int64_t)ex[c].ids.len, r = rows;
            for (int64_t k = 0; k < rows; k++)
                if (used[k] + len <= ROW) {
                    r = k;
                    break;
                }
            if (r == rows) rows++;
            where[c][0] = r;
            where[c][1] = used[r];
            used[r] += len;
        }
        CHECK(rows == pb.rows, "replayed %lld rows, packer made %lld", (long long)rows, (long long)pb.rows);
    }

    /* Packed: logits and the summed gradient. */
    finch_batch packed = {.batch = pb.rows, .seq_len = pb.seq_len, .input_ids = pb.input_ids, .labels = pb.labels, .segment_ids = pb.seq_ids};
    finch_step_options so = {1, 1.0f};
    finch_step_result rp;
    size_t n_logits = (size_t)(pb.rows * pb.seq_len * V);
    float *plog = malloc(n_logits * sizeof(float));
    ok(finch_zero_grads(m), "zero");
    if (!ok(finch_forward_backward(m, &packed, &so, &rp), "packed step")) return testing_finish();
    ok(finch_model_logits(m, plog, n_logits), "packed logits");
    int64_t ng = 0;
    float *gp = read_grads(m, &ng);

    /* One conversation at a time, gradients accumulating. */
    ok(finch_zero_grads(m), "zero");
    double sum_loss = 0, worst = 0, worst_loss = 0;
    int64_t sum_count = 0;
    for (int c = 0; c < N_CONV; c++) {
        int64_t len = (int64_t)ex[c].ids.len;
        finch_batch one = {.batch = 1, .seq_len = len, .input_ids = ex[c].ids.ids, .labels = ex[c].labels.ids, .segment_ids = NULL};
        finch_step_result r1;
        float *lg = malloc((size_t)(len * V) * sizeof(float));
        if (!ok(finch_forward_backward(m, &one, &so, &r1), "single step") || !ok(finch_model_logits(m, lg, (size_t)(len * V)), "logits")) {
            free(lg);
            continue;
        }
        const float *pl = plog + (size_t)((where[c][0] * pb.seq_len + where[c][1]) * V);
        double e = testing_rel_err(pl, lg, (size_t)(len * V));
        worst = e > worst ? e : worst;
        CHECK(e <= 1e-5, "conversation %d: packed logits differ, rel err %.3g", c, e);
        sum_loss += r1.loss_sum;
        sum_count += r1.token_count;

        /* The packed batch with every other conversation's labels masked gives this one's loss. */
        int32_t *lab = malloc((size_t)(pb.rows * pb.seq_len) * sizeof(int32_t));
        for (int64_t k = 0; k < pb.rows * pb.seq_len; k++) lab[k] = FINCH_LABEL_IGNORE;
        for (int64_t t = 1; t < len; t++) lab[where[c][0] * pb.seq_len + where[c][1] + t] = ex[c].labels.ids[t];
        finch_batch masked = {.batch = pb.rows, .seq_len = pb.seq_len, .input_ids = pb.input_ids, .labels = lab, .segment_ids = pb.seq_ids};
        finch_step_options fo = {0, 0.0f};
        finch_step_result rm;
        if (ok(finch_forward(m, &masked, &fo, &rm), "masked forward")) {
            double el = fabs(rm.loss - r1.loss) / fabs(r1.loss);
            worst_loss = el > worst_loss ? el : worst_loss;
            CHECK(rm.token_count == r1.token_count && el <= 1e-5, "conversation %d: packed loss %.7f (%lld tokens), alone %.7f (%lld)", c,
                  rm.loss, (long long)rm.token_count, r1.loss, (long long)r1.token_count);
        }
        free(lab);
        free(lg);
    }
    CHECK(sum_count == rp.token_count, "packed batch counts %lld tokens, the conversations %lld", (long long)rp.token_count,
          (long long)sum_count);
    CHECK(fabs(sum_loss - rp.loss_sum) <= 1e-5 * fabs(sum_loss), "loss sums %.7f vs %.7f", rp.loss_sum, sum_loss);
    int64_t ng1 = 0;
    float *g1 = read_grads(m, &ng1);
    double eg = testing_rel_err(gp, g1, (size_t)ng);
    CHECK(ng == ng1 && eg <= 1e-5, "adapter gradients: packed vs separate rel err %.3g", eg);
    printf("packed %d conversations in %lld rows: logits rel err <= %.2e, losses <= %.2e, grads %.2e\n", N_CONV,
           (long long)pb.rows, worst, worst_loss, eg);

    /* Padding (negative segment ids) predicts nothing and is not counted. */
    {
        int32_t ids[8], lab[8], seg[8] = {0, 0, 0, 0, 0, -1, -1, -1};
        for (int i = 0; i < 8; i++) ids[i] = lab[i] = next_id((int32_t)V);
        finch_batch b = {.batch = 1, .seq_len = 8, .input_ids = ids, .labels = lab, .segment_ids = seg};
        finch_step_result r;
        finch_step_options fo = {0, 0.0f};
        if (ok(finch_forward(m, &b, &fo, &r), "padded forward")) CHECK(r.token_count == 4, "padded row counts %lld tokens, not 4", (long long)r.token_count);
    }

    free(g1);
    free(gp);
    free(plog);
    finch_packed_batch_free(&pb);
    for (int c = 0; c < N_CONV; c++) finch_example_free(&ex[c]);
    finch_model_free(m);
    finch_runtime_close(rt);
    return testing_finish();
}
