/* Batched GEMM, C = alpha op(A) op(B) + beta C, with f32 accumulation. A work-group of 16x16
 * work-items computes a 64x64 tile of C, each work-item a 4x4 block strided by 16 so that
 * neighbouring work-items touch neighbouring local-memory words. Operands are staged through
 * local memory 16 deep in k, converted to f32 as they are loaded; an NF4 B operand (the
 * bitsandbytes layout: two codes a byte, first in the high nibble, one f32 absmax per block) is
 * dequantised in that load, so a quantised weight is never expanded in device memory. */
#define GEMM_TILE 64
#define GEMM_DEPTH 16
#define GEMM_WG 16
#define GEMM_PER (GEMM_TILE / GEMM_WG)

float load_nf4(const global uchar *packed, const global float *absmax, const global float *code,
               long blocksize, long i)
{
    uchar byte = packed[i >> 1];
    int nibble = (i & 1) ? (byte & 15) : (byte >> 4);
    return code[nibble] * absmax[i / blocksize];
}

float gemm_load(const global uchar *p, long i, int dt, const global float *absmax,
                const global float *code, long blocksize)
{
    return dt == DT_NF4 ? load_nf4(p, absmax, code, blocksize, i) : load(p, i, dt);
}

kernel void gemm(int trans_a, int trans_b, long m, long n, long k,
                 int a_dt, BUF(a), long lda, long stride_a,
                 int b_dt, BUF(b), long ldb, long stride_b, BUF(absmax), BUF(code), long blocksize,
                 int c_dt, BUF(c), long ldc, long stride_c, float alpha, float beta)
{
    local float ta[GEMM_DEPTH][GEMM_TILE + 1];
    local float tb[GEMM_DEPTH][GEMM_TILE + 1];
    const int lx = (int)get_local_id(0), ly = (int)get_local_id(1);
    const int lid = ly * GEMM_WG + lx;
    const long row0 = (long)get_group_id(1) * GEMM_TILE, col0 = (long)get_group_id(0) * GEMM_TILE;
    const long batch = get_group_id(2);
    const global uchar *pa = AT(a), *pb = AT(b);
    const global float *am = (const global float *)AT(absmax), *cd = (const global float *)AT(code);
    const long base_a = batch * stride_a, base_b = batch * stride_b;

    float acc[GEMM_PER][GEMM_PER];
    for (int i = 0; i < GEMM_PER; i++)
        for (int j = 0; j < GEMM_PER; j++) acc[i][j] = 0.0f;

    for (long k0 = 0; k0 < k; k0 += GEMM_DEPTH) {
        /* 64x16 elements of op(A) and 16x64 of op(B), four per work-item. */
        for (int e = lid; e < GEMM_TILE * GEMM_DEPTH; e += GEMM_WG * GEMM_WG) {
            int r, kk;
            if (trans_a) { r = e % GEMM_TILE; kk = e / GEMM_TILE; } /* stored A is [k, m] */
            else { kk = e % GEMM_DEPTH; r = e / GEMM_DEPTH; }
            long gr = row0 + r, gk = k0 + kk;
            float v = 0.0f;
            if (gr < m && gk < k) v = load(pa, base_a + (trans_a ? gk * lda + gr : gr * lda + gk), a_dt);
            ta[kk][r] = v;

            int cc;
            if (trans_b) { kk = e % GEMM_DEPTH; cc = e / GEMM_DEPTH; } /* stored B is [n, k] */
            else { cc = e % GEMM_TILE; kk = e / GEMM_TILE; }
            long gc = col0 + cc;
            gk = k0 + kk;
            v = 0.0f;
            if (gc < n && gk < k)
                v = gemm_load(pb, base_b + (trans_b ? gc * ldb + gk : gk * ldb + gc), b_dt, am, cd, blocksize);
            tb[kk][cc] = v;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < GEMM_DEPTH; kk++) {
            float av[GEMM_PER], bv[GEMM_PER];
            for (int i = 0; i < GEMM_PER; i++) av[i] = ta[kk][ly + i * GEMM_WG];
            for (int j = 0; j < GEMM_PER; j++) bv[j] = tb[kk][lx + j * GEMM_WG];
            for (int i = 0; i < GEMM_PER; i++)
                for (int j = 0; j < GEMM_PER; j++) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    global uchar *pc = AT(c);
    const long base_c = batch * stride_c;
    for (int i = 0; i < GEMM_PER; i++) {
        long r = row0 + ly + i * GEMM_WG;
        if (r >= m) continue;
        for (int j = 0; j < GEMM_PER; j++) {
            long cidx = col0 + lx + j * GEMM_WG;
            if (cidx >= n) continue;
            long idx = base_c + r * ldc + cidx;
            float v = alpha * acc[i][j];
            if (beta != 0.0f) v += beta * load(pc, idx, c_dt); /* beta == 0: C may hold garbage */
            store(pc, idx, c_dt, v);
        }
    }
}
