/* Switching backends mid-training between the CPU backend and the OpenCL plugin (PoCL in CI):
 *  - 10 steps on cpu, switch, 10 on opencl: the losses of 20 steps on cpu;
 *  - 10 steps on opencl, switch, 10 on cpu: the losses of 20 steps on opencl;
 *    within 1e-5 relative (f32), and every byte on the old OpenCL device is freed by the switch
 *    (counted by the wrapper of tests/fault_backend.h around the plugin's table);
 *  - a switch to an OpenCL device whose kernels do not build (FINCH_OPENCL_BUILD_OPTIONS breaks the
 *    source) fails with the build log and the model trains on, on the cpu.
 * Skipped (77) when the plugin is not built or finds no OpenCL device. */
#include "core/model.h"
#include "core/runtime.h"
#include "tests/fault_backend.h"
#include "tests/train_fixtures.h"

#include <math.h>

#define STEPS 20
#define SWITCH 10
#define TOL 1e-5

static finch_trainer_config config(void)
{
    finch_trainer_config c = finch_trainer_config_default();
    c.max_steps = STEPS;
    c.per_device_train_batch_size = 2;
    c.gradient_accumulation_steps = 2;
    c.learning_rate = 3e-3;
    c.lr_scheduler_type = FINCH_LR_COSINE;
    c.warmup_steps = 2;
    c.max_grad_norm = 0.5;
    c.seed = 7;
    c.lora.r = 4;
    c.lora.alpha = 8;
    c.lora.dropout = 0.1f;
    return c;
}

static const finch_plugin_api *opencl_api;

/* Moves m onto the OpenCL device 0 through the counting wrapper. */
static int to_opencl(finch_model *m)
{
    finch_backend fb;
    if (!fx_ok(fault_backend_open(opencl_api, &fb), "open opencl:0")) return 0;
    int rc = finch_model_move_backend(m, &fb, 1);
    if (rc) finch_backend_close(&fb);
    return fx_ok(rc, "move to opencl");
}

/* 20 steps: on `first` (0 cpu, 1 opencl) until step `at`, then on the other one (at = STEPS: no switch). */
static int train(finch_runtime *rt, const finch_train_data *data, int first, int at, double *losses)
{
    finch_model *m = fx_llama(rt, 0, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = config();
    int good = m && fx_ok(finch_trainer_open(m, &c, data, &t), "finch_trainer_open");
    if (good && first) good = to_opencl(m);
    while (good && finch_trainer_global_step(t) < STEPS) {
        if (finch_trainer_global_step(t) == at) {
            good = first ? fx_ok(finch_trainer_switch_backend(t, "cpu"), "switch to cpu") : to_opencl(m);
            if (good && first)
                CHECK(fault_live_bytes == 0, "opencl -> cpu: %lld bytes in %lld buffers left on the OpenCL device", fault_live_bytes,
                      fault_live_buffers);
            if (!good) break;
        }
        finch_train_progress p;
        int64_t k = finch_trainer_global_step(t);
        good = fx_ok(finch_trainer_step(t, &p), "finch_trainer_step");
        losses[k] = p.loss;
    }
    finch_trainer_close(t);
    finch_model_free(m);
    if (good) CHECK(fault_live_bytes == 0, "%lld bytes left on the OpenCL device after the model was freed", fault_live_bytes);
    return good;
}

static void compare(const char *what, const double *got, const double *ref)
{
    double worst = 0;
    for (int k = 0; k < STEPS; k++) worst = fmax(worst, fabs(got[k] - ref[k]) / fmax(fabs(ref[k]), 1e-12));
    CHECK(worst <= TOL, "%s: the losses differ from the reference by %.3g relative (tolerance %.0e)", what, worst, TOL);
    printf("%-40s worst relative loss difference %.3g over %d steps\n", what, worst, STEPS);
}

int main(void)
{
    const char *bin = getenv("FINCH_BIN_DIR");
    finch_runtime_options o = {"cpu", bin && *bin ? bin : NULL, 1};
    finch_runtime *rt = NULL;
    if (!fx_ok(finch_runtime_open_ex(&o, &rt), "finch_runtime_open_ex")) return testing_finish();
    finch_backend probe;
    if (finch_backend_open(rt->registry, "opencl", &probe) != FINCH_OK) {
        printf("SKIP: no OpenCL backend: %s\n", finch_last_error());
        finch_runtime_close(rt);
        return 77;
    }
    opencl_api = probe.api;
    finch_backend_close(&probe);

    finch_train_data *data = fx_conversations(24, 3, 200);
    double cpu[STEPS], ocl[STEPS], got[STEPS];
    if (train(rt, data, 0, STEPS, cpu) && train(rt, data, 1, STEPS, ocl)) {
        compare("20 steps: opencl vs cpu", ocl, cpu);
        if (train(rt, data, 0, SWITCH, got)) compare("10 cpu + 10 opencl vs 20 cpu", got, cpu);
        if (train(rt, data, 1, SWITCH, got)) compare("10 opencl + 10 cpu vs 20 opencl", got, ocl);
    }

    /* Kernels that do not build on the target: the error carries the build log; training goes on. */
    finch_model *m = fx_llama(rt, 0, 0);
    finch_trainer *t = NULL;
    finch_trainer_config c = config();
    if (m && fx_ok(finch_trainer_open(m, &c, data, &t), "finch_trainer_open")) {
        finch_train_progress p;
        fx_ok(finch_trainer_step(t, &p), "step 1");
        setenv("FINCH_OPENCL_BUILD_OPTIONS", "-DFINCH_SWITCH_TEST_BROKEN -Dfloat=flaot", 1);
        int rc = finch_trainer_switch_backend(t, "opencl");
        unsetenv("FINCH_OPENCL_BUILD_OPTIONS");
        CHECK(rc != FINCH_OK && strstr(finch_last_error(), "stays on cpu:0"), "a switch to kernels that do not build: %s (%s)",
              finch_status_name(rc), finch_last_error());
        printf("the refused switch said: %.300s...\n", finch_last_error());
        rc = finch_trainer_step(t, &p);
        CHECK(rc == FINCH_OK && fabs(p.loss - cpu[1]) <= 1e-6 * fabs(cpu[1]), "step 2 after the failed switch: %s, loss %.9g vs %.9g",
              finch_status_name(rc), p.loss, cpu[1]);
    }
    finch_trainer_close(t);
    finch_model_free(m);
    finch_train_data_free(data);
    finch_runtime_close(rt);
    return testing_finish();
}
