/* llama.cpp's block formats for the types finch writes. The byte layouts are llama.cpp's exactly
 * (llama.cpp reads these files); the quantisers are finch's own: a least-squares search for the
 * per-block scales and minimums, not llama.cpp's reference search.
 *
 *   q8_0  32 values: f16 d, i8 q[32];                              x = d q
 *   q4_0  32 values: f16 d, u8 q[16];  q[j] low nibble -> x[j], high nibble -> x[j+16];  x = d (q - 8)
 *   q4_K  256 values in 8 sub-blocks of 32: f16 d, f16 dmin, u8 scales[12] (8 six-bit scales and
 *         8 six-bit mins), u8 q[128];  x = d sc_j q - dmin m_j.  Each 64-value chunk c uses 32 bytes,
 *         low nibbles for sub-block 2c, high nibbles for 2c+1.
 *   q5_K  like q4_K plus u8 qh[32] (between scales and q) holding the fifth bit: for chunk c, bit 2c
 *         of qh[l] belongs to value 64c + l and bit 2c+1 to value 64c + 32 + l.
 *   q6_K  256 values in 16 sub-blocks of 16: u8 ql[128], u8 qh[64], i8 scales[16], f16 d (last);
 *         x = d scales[k] (q - 32), q six bits: per 128-value half, value l, l+32, l+64, l+96 (l < 32)
 *         take the low / low / high / high nibble of ql[l], ql[l+32], ql[l], ql[l+32] and bit pairs
 *         0-1, 2-3, 4-5, 6-7 of qh[l].                                                              */
#include "core/gguf.h"
#include "core/half.h"

#include <math.h>
#include <string.h>

#define QK 32
#define QK_K 256
#define Q4_K_BYTES 144
#define Q5_K_BYTES 176
#define Q6_K_BYTES 210

int gguf_type_known(int type)
{
    switch (type) {
    case GGML_F32: case GGML_F16: case GGML_BF16: case GGML_Q8_0: case GGML_Q4_0: case GGML_Q4_K: case GGML_Q5_K: case GGML_Q6_K:
        return 1;
    default:
        return 0;
    }
}

const char *gguf_type_name(int type)
{
    switch (type) {
    case GGML_F32: return "f32";
    case GGML_F16: return "f16";
    case GGML_BF16: return "bf16";
    case GGML_Q8_0: return "q8_0";
    case GGML_Q4_0: return "q4_0";
    case GGML_Q4_K: return "q4_K";
    case GGML_Q5_K: return "q5_K";
    case GGML_Q6_K: return "q6_K";
    default: return "?";
    }
}

int64_t gguf_block_elems(int type)
{
    switch (type) {
    case GGML_Q8_0: case GGML_Q4_0: return QK;
    case GGML_Q4_K: case GGML_Q5_K: case GGML_Q6_K: return QK_K;
    default: return 1;
    }
}

size_t gguf_block_bytes(int type)
{
    switch (type) {
    case GGML_F32: return 4;
    case GGML_F16: case GGML_BF16: return 2;
    case GGML_Q8_0: return 2 + QK;
    case GGML_Q4_0: return 2 + QK / 2;
    case GGML_Q4_K: return Q4_K_BYTES;
    case GGML_Q5_K: return Q5_K_BYTES;
    case GGML_Q6_K: return Q6_K_BYTES;
    default: return 0;
    }
}

size_t gguf_row_bytes(int type, int64_t n)
{
    return (size_t)(n / gguf_block_elems(type)) * gguf_block_bytes(type);
}

static void put_f16(unsigned char *p, float f)
{
    uint16_t h = finch_f32_to_f16(f);
    p[0] = (unsigned char)(h & 0xff);
    p[1] = (unsigned char)(h >> 8);
}

static float get_f16(const unsigned char *p)
{
    return finch_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

static float f16_round(float f)
{
    return finch_f16_to_f32(finch_f32_to_f16(f));
}

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- q8_0, q4_0 ---------------------------------------------------------------------------------- */

static void quantize_q8_0(const float *x, unsigned char *b)
{
    float amax = 0;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    put_f16(b, d);
    for (int j = 0; j < QK; j++) b[2 + j] = (unsigned char)(int8_t)lrintf(x[j] * id);
}

static void dequantize_q8_0(const unsigned char *b, float *y)
{
    float d = get_f16(b);
    for (int j = 0; j < QK; j++) y[j] = d * (float)(int8_t)b[2 + j];
}

/* The value of largest magnitude maps to -8, so the full range [-8, 7] is used on its side. */
static void quantize_q4_0(const float *x, unsigned char *b)
{
    float amax = 0, max = 0;
    for (int j = 0; j < QK; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
    put_f16(b, d);
    for (int j = 0; j < QK / 2; j++) {
        int lo = clampi((int)floorf(x[j] * id + 8.5f), 0, 15), hi = clampi((int)floorf(x[j + QK / 2] * id + 8.5f), 0, 15);
        b[2 + j] = (unsigned char)(lo | (hi << 4));
    }
}

static void dequantize_q4_0(const unsigned char *b, float *y)
{
    float d = get_f16(b);
    for (int j = 0; j < QK / 2; j++) {
        y[j] = d * (float)((b[2 + j] & 0xf) - 8);
        y[j + QK / 2] = d * (float)((b[2 + j] >> 4) - 8);
    }
}

/* ---- scale search ------------------------------------------------------------------------------ */

/* Fits x ≈ s q - m with integer q in [0, nmax], s >= 0, m >= 0 (the minimum is never above zero, as
 * llama.cpp's K-quants assume). Tries a few grids around (max - min) / nmax and refines each by least
 * squares on the chosen levels; returns the best (s, m). */
static void fit_affine(const float *x, int n, int nmax, float *s_out, float *m_out)
{
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    if (lo > 0) lo = 0;
    if (hi <= lo) {
        *s_out = 0;
        *m_out = -lo;
        return;
    }
    float best_s = (hi - lo) / (float)nmax, best_m = -lo, best_err = INFINITY;
    for (int step = -4; step <= 8; step++) {
        float s = (hi - lo) / ((float)nmax + 0.1f * (float)step), m = -lo;
        for (int iter = 0; iter < 2; iter++) {
            double sq = 0, sx = 0, sqq = 0, sqx = 0;
            for (int i = 0; i < n; i++) {
                int q = clampi((int)lrintf((x[i] + m) / s), 0, nmax);
                sq += q;
                sx += x[i];
                sqq += (double)q * q;
                sqx += (double)q * x[i];
            }
            double det = n * sqq - sq * sq;
            if (det <= 0) break;
            double ns = (n * sqx - sq * sx) / det, nm = (sq * sqx - sqq * sx) / det;  /* x = ns q - nm */
            if (ns <= 0) break;
            if (nm < 0) { /* keep the minimum at or below zero: refit the scale alone */
                nm = 0;
                ns = sqq > 0 ? sqx / sqq : ns;
            }
            s = (float)ns;
            m = (float)nm;
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            int q = clampi((int)lrintf((x[i] + m) / s), 0, nmax);
            float e = s * (float)q - m - x[i];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = s;
            best_m = m;
        }
    }
    *s_out = best_s;
    *m_out = best_m;
}

/* Fits x ≈ s q with integer q in [-32, 31], s >= 0. */
static float fit_symmetric(const float *x, int n)
{
    float amax = 0;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    if (amax == 0) return 0;
    float best_s = amax / 32.0f, best_err = INFINITY;
    for (int step = -4; step <= 8; step++) {
        float s = amax / (31.5f + 0.25f * (float)step);
        for (int iter = 0; iter < 2; iter++) {
            double qq = 0, qx = 0;
            for (int i = 0; i < n; i++) {
                int q = clampi((int)lrintf(x[i] / s), -32, 31);
                qq += (double)q * q;
                qx += (double)q * x[i];
            }
            if (qq <= 0 || qx <= 0) break;
            s = (float)(qx / qq);
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float e = s * (float)clampi((int)lrintf(x[i] / s), -32, 31) - x[i];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = s;
        }
    }
    return best_s;
}

/* ---- q4_K, q5_K -------------------------------------------------------------------------------- */

static void pack_scales_k4(const int *sc, const int *mn, unsigned char *q)
{
    for (int j = 0; j < 4; j++) {
        q[j] = (unsigned char)(sc[j] | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = (unsigned char)(mn[j] | ((mn[j + 4] >> 4) << 6));
        q[j + 8] = (unsigned char)((sc[j + 4] & 0xf) | ((mn[j + 4] & 0xf) << 4));
    }
}

static void scale_min_k4(int j, const unsigned char *q, int *sc, int *mn)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Levels of the 256 values for q4_K (nmax 15) or q5_K (nmax 31); writes d, dmin and the scales. */
static void quantize_k_affine(const float *x, int nmax, unsigned char *dm, unsigned char *scales, uint8_t *L)
{
    float s[8], m[8], smax = 0, mmax = 0;
    for (int j = 0; j < 8; j++) {
        fit_affine(x + 32 * j, 32, nmax, &s[j], &m[j]);
        smax = fmaxf(smax, s[j]);
        mmax = fmaxf(mmax, m[j]);
    }
    float d = f16_round(smax / 63.0f), dmin = f16_round(mmax / 63.0f);
    int sc[8], mn[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = d > 0 ? clampi((int)lrintf(s[j] / d), 0, 63) : 0;
        mn[j] = dmin > 0 ? clampi((int)lrintf(m[j] / dmin), 0, 63) : 0;
    }
    put_f16(dm, d);
    put_f16(dm + 2, dmin);
    pack_scales_k4(sc, mn, scales);
    for (int j = 0; j < 8; j++) {
        float es = d * (float)sc[j], em = dmin * (float)mn[j];
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)(es > 0 ? clampi((int)lrintf((x[32 * j + i] + em) / es), 0, nmax) : 0);
    }
}

static void quantize_q4_K(const float *x, unsigned char *b)
{
    uint8_t L[QK_K];
    quantize_k_affine(x, 15, b, b + 4, L);
    unsigned char *q = b + 16;
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) q[32 * c + l] = (unsigned char)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

static void dequantize_q4_K(const unsigned char *b, float *y)
{
    float d = get_f16(b), dmin = get_f16(b + 2);
    const unsigned char *scales = b + 4, *q = b + 16;
    for (int c = 0; c < 4; c++) {
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * c, scales, &sc0, &m0);
        scale_min_k4(2 * c + 1, scales, &sc1, &m1);
        for (int l = 0; l < 32; l++) {
            y[64 * c + l] = d * (float)sc0 * (float)(q[32 * c + l] & 0xf) - dmin * (float)m0;
            y[64 * c + 32 + l] = d * (float)sc1 * (float)(q[32 * c + l] >> 4) - dmin * (float)m1;
        }
    }
}

static void quantize_q5_K(const float *x, unsigned char *b)
{
    uint8_t L[QK_K];
    quantize_k_affine(x, 31, b, b + 4, L);
    unsigned char *qh = b + 16, *q = b + 48;
    memset(qh, 0, 32);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            int a = L[64 * c + l], h = L[64 * c + 32 + l];
            q[32 * c + l] = (unsigned char)((a & 0xf) | ((h & 0xf) << 4));
            qh[l] |= (unsigned char)(((a >> 4) << (2 * c)) | ((h >> 4) << (2 * c + 1)));
        }
}

static void dequantize_q5_K(const unsigned char *b, float *y)
{
    float d = get_f16(b), dmin = get_f16(b + 2);
    const unsigned char *scales = b + 4, *qh = b + 16, *q = b + 48;
    for (int c = 0; c < 4; c++) {
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * c, scales, &sc0, &m0);
        scale_min_k4(2 * c + 1, scales, &sc1, &m1);
        for (int l = 0; l < 32; l++) {
            int a = (q[32 * c + l] & 0xf) | (((qh[l] >> (2 * c)) & 1) << 4);
            int h = (q[32 * c + l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
            y[64 * c + l] = d * (float)sc0 * (float)a - dmin * (float)m0;
            y[64 * c + 32 + l] = d * (float)sc1 * (float)h - dmin * (float)m1;
        }
    }
}

/* ---- q6_K ---------------------------------------------------------------------------------------- */

static void quantize_q6_K(const float *x, unsigned char *b)
{
    unsigned char *ql = b, *qh = b + 128, *d_at = b + 208;
    int8_t *scales = (int8_t *)(b + 192);
    float s[16], smax = 0;
    for (int k = 0; k < 16; k++) {
        s[k] = fit_symmetric(x + 16 * k, 16);
        smax = fmaxf(smax, s[k]);
    }
    float d = f16_round(smax / 127.0f);
    put_f16(d_at, d);
    uint8_t L[QK_K];
    for (int k = 0; k < 16; k++) {
        int sc = d > 0 ? clampi((int)lrintf(s[k] / d), 0, 127) : 0;
        scales[k] = (int8_t)sc;
        float es = d * (float)sc;
        for (int i = 0; i < 16; i++)
            L[16 * k + i] = (uint8_t)((es > 0 ? clampi((int)lrintf(x[16 * k + i] / es), -32, 31) : 0) + 32);
    }
    for (int h = 0; h < 2; h++) {
        const uint8_t *Lh = L + 128 * h;
        unsigned char *qlh = ql + 64 * h, *qhh = qh + 32 * h;
        for (int l = 0; l < 32; l++) {
            int q0 = Lh[l], q1 = Lh[l + 32], q2 = Lh[l + 64], q3 = Lh[l + 96];
            qlh[l] = (unsigned char)((q0 & 0xf) | ((q2 & 0xf) << 4));
            qlh[l + 32] = (unsigned char)((q1 & 0xf) | ((q3 & 0xf) << 4));
            qhh[l] = (unsigned char)((q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6));
        }
    }
}

static void dequantize_q6_K(const unsigned char *b, float *y)
{
    const unsigned char *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = get_f16(b + 208);
    for (int h = 0; h < 2; h++) {
        const unsigned char *qlh = ql + 64 * h, *qhh = qh + 32 * h;
        const int8_t *s = sc + 8 * h;
        float *yh = y + 128 * h;
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q0 = (qlh[l] & 0xf) | (((qhh[l] >> 0) & 3) << 4);
            int q1 = (qlh[l + 32] & 0xf) | (((qhh[l] >> 2) & 3) << 4);
            int q2 = (qlh[l] >> 4) | (((qhh[l] >> 4) & 3) << 4);
            int q3 = (qlh[l + 32] >> 4) | (((qhh[l] >> 6) & 3) << 4);
            yh[l] = d * (float)s[is] * (float)(q0 - 32);
            yh[l + 32] = d * (float)s[is + 2] * (float)(q1 - 32);
            yh[l + 64] = d * (float)s[is + 4] * (float)(q2 - 32);
            yh[l + 96] = d * (float)s[is + 6] * (float)(q3 - 32);
        }
    }
}

/* ---- rows ------------------------------------------------------------------------------------------ */

void gguf_quantize(int type, const float *x, int64_t n, void *dst)
{
    unsigned char *b = dst;
    int64_t nb = n / gguf_block_elems(type);
    size_t bs = gguf_block_bytes(type);
    switch (type) {
    case GGML_F32:
        memcpy(dst, x, (size_t)n * 4);
        return;
    case GGML_F16:
    case GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = type == GGML_F16 ? finch_f32_to_f16(x[i]) : finch_f32_to_bf16(x[i]);
            b[2 * i] = (unsigned char)(h & 0xff);
            b[2 * i + 1] = (unsigned char)(h >> 8);
        }
        return;
    default:
        break;
    }
#pragma omp parallel for schedule(static) if (nb >= 64)
    for (int64_t i = 0; i < nb; i++) {
        const float *xi = x + i * gguf_block_elems(type);
        unsigned char *bi = b + (size_t)i * bs;
        switch (type) {
        case GGML_Q8_0: quantize_q8_0(xi, bi); break;
        case GGML_Q4_0: quantize_q4_0(xi, bi); break;
        case GGML_Q4_K: quantize_q4_K(xi, bi); break;
        case GGML_Q5_K: quantize_q5_K(xi, bi); break;
        case GGML_Q6_K: quantize_q6_K(xi, bi); break;
        default: break;
        }
    }
}

void gguf_dequantize(int type, const void *src, int64_t n, float *y)
{
    const unsigned char *b = src;
    int64_t nb = n / gguf_block_elems(type);
    size_t bs = gguf_block_bytes(type);
    switch (type) {
    case GGML_F32:
        memcpy(y, src, (size_t)n * 4);
        return;
    case GGML_F16:
    case GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(b[2 * i] | (b[2 * i + 1] << 8));
            y[i] = type == GGML_F16 ? finch_f16_to_f32(h) : finch_bf16_to_f32(h);
        }
        return;
    default:
        break;
    }
    for (int64_t i = 0; i < nb; i++) {
        float *yi = y + i * gguf_block_elems(type);
        const unsigned char *bi = b + (size_t)i * bs;
        switch (type) {
        case GGML_Q8_0: dequantize_q8_0(bi, yi); break;
        case GGML_Q4_0: dequantize_q4_0(bi, yi); break;
        case GGML_Q4_K: dequantize_q4_K(bi, yi); break;
        case GGML_Q5_K: dequantize_q5_K(bi, yi); break;
        case GGML_Q6_K: dequantize_q6_K(bi, yi); break;
        default: break;
        }
    }
}
