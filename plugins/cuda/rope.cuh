/* The angles and turns of rotary embedding ("rotate half" layout, finch_rope_desc), shared by
 * rope_forward/backward (rope.cu) and the decode attention that turns its query and new key on load
 * (attention_decode.cu), so both compute the same values. */
#ifndef FINCH_GPU_ROPE_CUH
#define FINCH_GPU_ROPE_CUH

#include "gpu_plugin.h"

struct rope_angles {
    const int32_t *positions; /* [n_sections][n_tokens] */
    const float *inv_freq;    /* [half] */
    int64_t n_tokens;
    int half;                 /* rot_dim / 2; 0: nothing turns */
    int n_sections;
    int section_end[4];       /* running sums of sections */
    float attn_factor;
};

/* Checks d's rotation (rot_dim against head_dim, sections) and fills a for n_tokens tokens; `entry`
 * names the caller in an error. */
static inline int rope_angles_setup(const finch_rope_desc *d, int64_t n_tokens, rope_angles *a, const char *entry)
{
    if (d->rot_dim < 0 || d->rot_dim % 2 || d->rot_dim > d->head_dim)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: rot_dim %lld, head_dim %lld", entry,
                        (long long)d->rot_dim, (long long)d->head_dim);
    if (d->n_sections < 1 || d->n_sections > 4)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: n_sections %d", entry, d->n_sections);
    a->positions = (const int32_t *)gpu_ptr(d->positions);
    a->inv_freq = (const float *)gpu_ptr(d->inv_freq);
    a->n_tokens = n_tokens;
    a->half = (int)(d->rot_dim / 2);
    a->n_sections = d->n_sections;
    int sum = 0;
    for (int i = 0; i < 4; i++) {
        sum += i < d->n_sections ? d->sections[i] : 0;
        a->section_end[i] = sum;
    }
    if (d->n_sections > 1 && sum != a->half)
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: sections sum to %d, not rot_dim/2 = %d", entry, sum,
                        a->half);
    a->attn_factor = d->attn_factor;
    if (a->half && (!a->positions || !a->inv_freq))
        return gpu_fail(FINCH_ERR_INVALID_ARGUMENT, FINCH_GPU_PLUGIN_NAME ": %s: positions or inv_freq is absent", entry);
    return FINCH_OK;
}

#if defined(__CUDACC__) || defined(__HIPCC__)
/* cos and sin (times attn_factor; sin times sign, -1 turning back) of pair d < half of token t. */
__device__ __forceinline__ void rope_cos_sin(const rope_angles &a, int64_t t, int d, float sign, float *c, float *sn)
{
    /* the section of d: how many section ends it is past (not an index into section_end, which
     * would put the parameters in local memory) */
    int s = (a.n_sections > 1 && d >= a.section_end[0]) + (a.n_sections > 2 && d >= a.section_end[1]) +
            (a.n_sections > 3 && d >= a.section_end[2]);
    float theta = (float)a.positions[(int64_t)s * a.n_tokens + t] * a.inv_freq[d];
    *c = cosf(theta) * a.attn_factor;
    *sn = sinf(theta) * a.attn_factor * sign;
}

/* The pair (x1, x2) = (x[d], x[d + half]) turned: its first and its second element. */
__device__ __forceinline__ float rope_first(float x1, float x2, float c, float sn) { return x1 * c - x2 * sn; }
__device__ __forceinline__ float rope_second(float x1, float x2, float c, float sn) { return x2 * c + x1 * sn; }

/* Element e of a head row x (one head, `half` pairs) after the turn of token t, rounded to T as the
 * in-place rotation stores it. */
template <typename T>
__device__ __forceinline__ T rope_element(const rope_angles &a, const T *x, int64_t t, int e)
{
    if (e >= 2 * a.half) return x[e];
    int d = e < a.half ? e : e - a.half;
    float c, sn, x1 = to_f32(x[d]), x2 = to_f32(x[d + a.half]);
    rope_cos_sin(a, t, d, 1.0f, &c, &sn);
    return from_f32<T>(e < a.half ? rope_first(x1, x2, c, sn) : rope_second(x1, x2, c, sn));
}
#endif

#endif
