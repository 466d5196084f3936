/* Gradient accumulation is exact: one optimizer step over the same 8 conversations as 1 x 8,
 * 2 x 4, 8 x 1 (rows per micro-batch x micro-batches) and packed gives the same loss, the same
 * accumulated gradient (sum of token-loss gradients / all trained tokens of the step) and the same
 * update, within 1e-5 relative (f32 CPU, llama golden model with its adapter). */
#include "tests/train_fixtures.h"

#include <math.h>

#define TOL 1e-5

typedef struct outcome {
    double loss;
    int64_t tokens;
    float *grads, *params;
    size_t n;
} outcome;

static int one_step(finch_runtime *rt, const finch_train_data *data, int batch, int accum, int packing, outcome *o)
{
    memset(o, 0, sizeof *o);
    finch_model *m = fx_llama(rt, 1, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = finch_trainer_config_default();
    c.max_steps = 1;
    c.per_device_train_batch_size = batch;
    c.gradient_accumulation_steps = accum;
    c.packing = packing;
    c.max_seq_length = 64;
    c.shuffle = 0;
    c.learning_rate = 1e-3;
    c.max_grad_norm = 0;
    finch_train_progress p;
    int good = m && fx_ok(finch_trainer_open(m, &c, data, &t), "open") && fx_ok(finch_trainer_step(t, &p), "step");
    if (good) {
        o->loss = p.loss;
        o->tokens = p.tokens;
        o->grads = fx_read_all(m, 1, &o->n);
        o->params = fx_read_all(m, 0, &o->n);
    }
    finch_trainer_close(t);
    finch_model_free(m);
    return good;
}

int main(void)
{
    finch_runtime *rt = NULL;
    if (!(rt = fx_runtime())) return testing_finish();
    finch_train_data *data = fx_conversations(8, 7, 320);
    static const struct { int batch, accum, packing; } shapes[] = {{1, 8, 0}, {2, 4, 0}, {8, 1, 0}, {4, 2, 0}, {8, 1, 1}};
    outcome ref, o;
    if (!one_step(rt, data, 1, 8, 0, &ref)) return testing_finish();
    for (size_t i = 1; i < sizeof shapes / sizeof shapes[0]; i++) {
        if (!one_step(rt, data, shapes[i].batch, shapes[i].accum, shapes[i].packing, &o)) continue;
        double el = fabs(o.loss - ref.loss) / ref.loss;
        double eg = testing_rel_err(o.grads, ref.grads, ref.n), ep = testing_rel_err(o.params, ref.params, ref.n);
        CHECK(o.tokens == ref.tokens, "%d x %d%s: %lld trained tokens, 1 x 8 has %lld", shapes[i].batch, shapes[i].accum,
              shapes[i].packing ? " packed" : "", (long long)o.tokens, (long long)ref.tokens);
        CHECK(el <= TOL && eg <= TOL && ep <= TOL, "%d x %d%s vs 1 x 8: loss %.3g, gradient %.3g, weights %.3g (rel err)", shapes[i].batch,
              shapes[i].accum, shapes[i].packing ? " packed" : "", el, eg, ep);
        printf("  %d x %d%-7s loss %.7f (1 x 8: %.7f)  gradient rel err %.2e  weights %.2e\n", shapes[i].batch, shapes[i].accum,
               shapes[i].packing ? " packed" : "", o.loss, ref.loss, eg, ep);
        free(o.grads);
        free(o.params);
    }
    /* The step's gradient is not a mean of per-micro-batch means: with 8 x 1 each micro-batch's
     * gradient is scaled by the step's token total, so a conversation's weight is its token count. */
    {
        finch_model *m = fx_llama(rt, 1, 0);
        double sum = 0;
        int64_t count = 0;
        for (size_t c = 0; c < finch_train_data_count(data); c++) {
            const finch_example *e = finch_train_data_example(data, c);
            finch_batch b = {.batch = 1, .seq_len = (int64_t)e->ids.len, .input_ids = e->ids.ids, .labels = e->labels.ids, .segment_ids = NULL};
            finch_step_result r;
            finch_step_options so = {0, 0.0f};
            if (fx_ok(finch_forward(m, &b, &so, &r), "forward")) {
                sum += r.loss_sum;
                count += r.token_count;
            }
        }
        CHECK(count == ref.tokens && fabs(sum / (double)count - ref.loss) <= TOL * ref.loss,
              "step loss %.7f over %lld tokens, token-weighted mean of the conversations %.7f over %lld", ref.loss, (long long)ref.tokens,
              sum / (double)count, (long long)count);
        finch_model_free(m);
    }
    free(ref.grads);
    free(ref.params);
    finch_train_data_free(data);
    finch_runtime_close(rt);
    return testing_finish();
}
