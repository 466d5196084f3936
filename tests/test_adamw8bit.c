/* The 8-bit AdamW entry (plugin ABI 1.1) of the CPU backend, and of the OpenCL plugin when it is built
 * and a platform is present (PoCL in CI), against a scalar reference written from plugin.h's
 * description, bit for bit: parameters, codes and block scales over several steps, with a
 * partial last block, an all-zero block, weight decay, gradient scaling, and a bf16 parameter with
 * an f32 master copy. Also the unsigned dynamic map's shape, and argument checks. */
#include "backends/backend.h"
#include "core/half.h"
#include "core/nf4.h"
#include "tests/test_opencl.h"
#include "tests/testing.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define N 1000
#define BS 256
#define NB ((N + BS - 1) / BS)

static uint8_t ref_nearest(const float *map, float x)
{
    int k = 0;
    for (int i = 0; i < 255; i++) k += x > (map[i] + map[i + 1]) * 0.5f;
    return (uint8_t)k;
}

typedef struct state {
    float p[N];
    uint8_t mc[N], vc[N];
    float ma[NB], va[NB];
} state;

static void ref_step(state *s, const float *g, const float *mmap, const float *vmap, float lr, float wd, float gs, float bc1, float bc2)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    for (int b = 0; b < NB; b++) {
        int i0 = b * BS, len = N - i0 < BS ? N - i0 : BS;
        float m[BS], v[BS], mmax = 0, vmax = 0;
        for (int k = 0; k < len; k++) {
            int i = i0 + k;
            float gi = g[i] * gs;
            m[k] = b1 * (mmap[s->mc[i]] * s->ma[b]) + (1.0f - b1) * gi;
            v[k] = b2 * (vmap[s->vc[i]] * s->va[b]) + (1.0f - b2) * gi * gi;
            s->p[i] = s->p[i] * (1.0f - lr * wd) - (lr / bc1) * m[k] / (sqrtf(v[k]) * (1.0f / sqrtf(bc2)) + eps);
            mmax = fmaxf(mmax, fabsf(m[k]));
            vmax = fmaxf(vmax, fabsf(v[k]));
        }
        for (int k = 0; k < len; k++) {
            s->mc[i0 + k] = ref_nearest(mmap, mmax > 0 ? m[k] / mmax : 0.0f);
            s->vc[i0 + k] = ref_nearest(vmap, vmax > 0 ? v[k] / vmax : 0.0f);
        }
        s->ma[b] = mmax;
        s->va[b] = vmax;
    }
}

static finch_dptr at(finch_plugin_buffer *b, size_t off) { return (finch_dptr){b, off}; }

static void run_case(const finch_plugin_api *api, finch_plugin_device *dev, int bf16, const char *backend)
{
    float mmap[256], vmap[256];
    nf4_dynamic_map(mmap);
    nf4_dynamic_map_unsigned(vmap);
    static state ref, got;
    memset(&ref, 0, sizeof ref);
    testing_fill_random(ref.p, N, 5);
    if (bf16)
        for (int i = 0; i < N; i++) ref.p[i] = finch_bf16_to_f32(finch_f32_to_bf16(ref.p[i]));
    /* layout: param (f32 or bf16) | master f32 | grad f32 | codes m, v | absmax m, v | maps */
    size_t o_master = N * 4, o_grad = o_master + N * 4, o_mc = o_grad + N * 4, o_vc = o_mc + N, o_ma = o_vc + N, o_va = o_ma + NB * 4,
           o_map = o_va + NB * 4, total = o_map + 512 * 4;
    finch_plugin_buffer *buf = NULL;
    CHECK(api->alloc(dev, total, &buf) == FINCH_OK, "alloc");
    if (!buf) return;
    if (bf16) {
        uint16_t h[N];
        for (int i = 0; i < N; i++) h[i] = finch_f32_to_bf16(ref.p[i]);
        api->write(dev, NULL, at(buf, 0), h, sizeof h);
        api->write(dev, NULL, at(buf, o_master), ref.p, sizeof ref.p);
    } else {
        api->write(dev, NULL, at(buf, 0), ref.p, sizeof ref.p);
    }
    api->fill(dev, NULL, at(buf, o_mc), FINCH_DTYPE_F32, (int64_t)((o_map - o_mc) / 4), 0.0f);
    api->write(dev, NULL, at(buf, o_map), mmap, sizeof mmap);
    api->write(dev, NULL, at(buf, o_map + 1024), vmap, sizeof vmap);
    int same = 1;
    for (int step = 1; step <= 5; step++) {
        float g[N];
        testing_fill_random(g, N, 100 + (unsigned long long)step);
        for (int i = 512; i < 768; i++) g[i] = step == 1 ? 0.0f : g[i];   /* block 2 starts all zero */
        float lr = 1e-2f, wd = 0.05f, gs = 0.5f, bc1 = 1.0f - powf(0.9f, (float)step), bc2 = 1.0f - powf(0.999f, (float)step);
        api->write(dev, NULL, at(buf, o_grad), g, sizeof g);
        finch_adamw8bit_desc d;
        memset(&d, 0, sizeof d);
        d.n = N;
        d.blocksize = BS;
        d.param_type = bf16 ? FINCH_DTYPE_BF16 : FINCH_DTYPE_F32;
        d.param = at(buf, 0);
        d.master = bf16 ? at(buf, o_master) : (finch_dptr){0, 0};
        d.grad = at(buf, o_grad);
        d.m_codes = at(buf, o_mc);
        d.v_codes = at(buf, o_vc);
        d.m_absmax = at(buf, o_ma);
        d.v_absmax = at(buf, o_va);
        d.m_map = at(buf, o_map);
        d.v_map = at(buf, o_map + 1024);
        d.lr = lr, d.beta1 = 0.9f, d.beta2 = 0.999f, d.eps = 1e-8f, d.weight_decay = wd, d.grad_scale = gs;
        d.bias_correction1 = bc1, d.bias_correction2 = bc2;
        CHECK(api->adamw8bit_step(dev, NULL, &d) == FINCH_OK, "adamw8bit_step: %s", api->last_error());
        ref_step(&ref, g, mmap, vmap, lr, wd, gs, bc1, bc2);
        api->read(dev, NULL, at(buf, bf16 ? o_master : 0), got.p, sizeof got.p);
        api->read(dev, NULL, at(buf, o_mc), got.mc, N);
        api->read(dev, NULL, at(buf, o_vc), got.vc, N);
        api->read(dev, NULL, at(buf, o_ma), got.ma, sizeof got.ma);
        api->read(dev, NULL, at(buf, o_va), got.va, sizeof got.va);
        int s = !memcmp(got.p, ref.p, sizeof ref.p) && !memcmp(got.mc, ref.mc, N) && !memcmp(got.vc, ref.vc, N) &&
                !memcmp(got.ma, ref.ma, sizeof ref.ma) && !memcmp(got.va, ref.va, sizeof ref.va);
        CHECK(s, "%s %s step %d differs from the scalar reference", backend, bf16 ? "bf16+master" : "f32", step);
        same &= s;
        if (bf16) {
            uint16_t h[N];
            int stored = 1;
            api->read(dev, NULL, at(buf, 0), h, sizeof h);
            for (int i = 0; i < N; i++) stored &= h[i] == finch_f32_to_bf16(ref.p[i]);
            CHECK(stored, "step %d: the bf16 parameter is not the rounded master", step);
        }
        if (step == 1) CHECK(ref.ma[2] == 0 && ref.mc[600] == ref_nearest(mmap, 0.0f), "a zero block keeps scale 0 and the code of 0");
    }
    /* The moments decode close to their f32 values: spot-check the scale of block 0. */
    CHECK(ref.ma[0] > 0 && ref.va[0] > 0, "non-zero scales");
    printf("  %-7s %-12s 5 steps, %d elements in blocks of %d: %s\n", backend, bf16 ? "bf16+master" : "f32", N, BS,
           same ? "bit-identical to the reference" : "DIFFERENT");
    api->free(dev, buf);
}

int main(void)
{
    float u[256], s[256];
    nf4_dynamic_map(s);
    nf4_dynamic_map_unsigned(u);
    int ascending = 1;
    for (int i = 1; i < 256; i++) ascending &= u[i] > u[i - 1] && s[i] > s[i - 1];
    CHECK(ascending && u[0] == 0.0f && u[255] == 1.0f && s[127] == 0.0f && s[255] == 1.0f, "dynamic maps: ascending, 0 and 1 in place");
    /* create_dynamic_map(signed=False): the smallest step is 1e-6 * (0.1 + 0.55) / 2. */
    CHECK(fabsf(u[1] - 3.25e-7f) < 1e-12f, "unsigned map[1] = %.9g", u[1]);

    const finch_plugin_api *api = finch_cpu_plugin_api();
    finch_plugin_device *dev = NULL;
    if (api->init() || api->device_open(0, &dev)) return testing_finish();
    CHECK(api->adamw8bit_step != NULL && api->abi_minor >= 1, "the CPU backend has adamw8bit_step (ABI 1.%u)", api->abi_minor);
    run_case(api, dev, 0, "cpu");
    run_case(api, dev, 1, "cpu");
    finch_adamw8bit_desc d;
    memset(&d, 0, sizeof d);
    d.n = 10;
    d.blocksize = 8192;
    d.bias_correction1 = d.bias_correction2 = 1;
    CHECK(api->adamw8bit_step(dev, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT && strstr(api->last_error(), "blocksize"), "blocksize 8192: '%s'",
          api->last_error());
    d.blocksize = 256;
    CHECK(api->adamw8bit_step(dev, NULL, &d) == FINCH_ERR_INVALID_ARGUMENT && strstr(api->last_error(), "param"), "no buffers: '%s'",
          api->last_error());
    api->device_close(dev);

    ocl_test t;
    if (ocl_test_open(&t) == 0) {
        CHECK(t.api->adamw8bit_step != NULL, "the OpenCL plugin has no adamw8bit_step");
        if (t.api->adamw8bit_step) {
            run_case(t.api, t.dev, 0, "opencl");
            run_case(t.api, t.dev, 1, "opencl");
        }
    }
    ocl_test_close(&t);
    return testing_finish();
}
