/* `finch train --switch-backend-at STEP:NAME` as a program: a tiny llama (finch init) trained 6 steps
 * on the cpu, and again with switches to the OpenCL plugin after step 2 and back to the cpu after
 * step 4 (when the plugin loads here): the same losses within 1e-5 relative. A switch to a backend
 * that does not exist stops the run with an error naming it, after checkpointing the last step. */
#include "tests/testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define STEPS 6

static char bin[512], dir[600], model[700], data[700];

static int read_losses(const char *path, double *losses)
{
    FILE *f = fopen(path, "r");
    int n = 0;
    char line[1024];
    while (f && fgets(line, sizeof line, f)) {
        long step;
        char *l = strstr(line, "\"loss\": ");
        if (sscanf(line, "{\"step\": %ld", &step) != 1 || !l || step < 1 || step > STEPS) continue;
        losses[step - 1] = strtod(l + 8, NULL);
        if (step > n) n = (int)step;
    }
    if (f) fclose(f);
    return n;
}

static int train(const char *name, const char *extra, double *losses, char *out, size_t size)
{
    char cmd[8192], path[1400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/%s' && '%s/finch' train --model '%s' --data '%s' --out '%s/%s' --max-steps %d --backend cpu "
             "--lr-scheduler constant --learning-rate 3e-3 --batch-size 8 --grad-accum 1 --lora-r 8 --threads 1 %s",
             dir, name, bin, model, data, dir, name, STEPS, extra);
    int rc = testing_run(cmd, out, size);
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", dir, name);
    if (losses) read_losses(path, losses);
    return rc;
}

int main(void)
{
    snprintf(bin, sizeof bin, "%s", testing_bin_dir());
    snprintf(dir, sizeof dir, "%s/cli_switch", testing_tmp_dir());
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(data, sizeof data, "%s/data.jsonl", dir);
    static char out[1 << 16];
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && '%s/finch' init --arch llama --out '%s' --hidden 64 --layers 2 --heads 4 "
             "--kv-heads 2 --seed 5", dir, dir, bin, model);
    int rc = testing_run(cmd, out, sizeof out);
    CHECK(rc == 0, "finch init exited %d:\n%s", rc, out);
    CHECK(testing_write_sums_jsonl(data) == 0, "cannot write %s", data);

    double ref[STEPS] = {0}, got[STEPS] = {0};
    rc = train("plain", "", ref, out, sizeof out);
    CHECK(rc == 0, "finch train exited %d:\n%s", rc, out);

    rc = train("switched", "--switch-backend-at 2:opencl --switch-backend-at 4:cpu", got, out, sizeof out);
    if (rc != 0 && (strstr(out, "backend 'opencl' did not load") || strstr(out, "unknown backend 'opencl'"))) {
        printf("no OpenCL backend here: the switch to it is skipped\n");
    } else {
        CHECK(rc == 0 && strstr(out, "after step 2, switched to backend opencl") && strstr(out, "after step 4, switched to backend cpu"),
              "finch train with switches exited %d:\n%s", rc, out);
        double worst = 0;
        for (int k = 0; k < STEPS; k++) worst = fmax(worst, fabs(got[k] - ref[k]) / fmax(fabs(ref[k]), 1e-12));
        CHECK(worst <= 1e-5, "cpu -> opencl -> cpu: the losses differ from the cpu run's by %.3g relative", worst);
        printf("cpu -> opencl -> cpu: worst relative loss difference %.3g over %d steps\n", worst, STEPS);
    }

    rc = train("bad", "--switch-backend-at 2:nosuch --save-steps 100", got, out, sizeof out);
    CHECK(rc != 0 && strstr(out, "unknown backend 'nosuch'") && strstr(out, "stays on cpu:0") && strstr(out, "backend switch failed"),
          "a switch to an unknown backend: exit %d:\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "test -d '%s/bad/checkpoint-2'", dir);
    CHECK(system(cmd) == 0, "no checkpoint of step 2 after the failed switch:\n%s", out);
    rc = train("usage", "--switch-backend-at two:opencl", NULL, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "not a valid value for --switch-backend-at"), "a bad STEP: exit %d:\n%s", rc, out);
    return testing_finish();
}
