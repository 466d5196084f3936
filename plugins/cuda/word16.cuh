/* 16-byte words of elements (8 bf16/f16 or 4 f32) for the row-wise memory-bound kernels: one load
 * or store instruction a word instead of one an element. */
#ifndef FINCH_CUDA_WORD16_CUH
#define FINCH_CUDA_WORD16_CUH

#include "gpu_plugin.h"

template <typename T> struct word16 { static constexpr int n = 16 / (int)sizeof(T); };

template <typename T>
__device__ __forceinline__ void load_word(const T *p, float *v)
{
    uint4 u = *(const uint4 *)p;
    const T *e = (const T *)&u;
#pragma unroll
    for (int i = 0; i < word16<T>::n; i++) v[i] = to_f32(e[i]);
}

template <typename T>
__device__ __forceinline__ void store_word(T *p, const float *v)
{
    uint4 u;
    T *e = (T *)&u;
#pragma unroll
    for (int i = 0; i < word16<T>::n; i++) e[i] = from_f32<T>(v[i]);
    *(uint4 *)p = u;
}

/* N consecutive elements: a 16-byte word when N is a word's count, else one by one. */
template <int N, typename T>
__device__ __forceinline__ void load_elements(const T *p, float *v)
{
    if constexpr (N == word16<T>::n) load_word(p, v);
    else
#pragma unroll
        for (int i = 0; i < N; i++) v[i] = to_f32(p[i]);
}

template <int N, typename T>
__device__ __forceinline__ void store_elements(T *p, const float *v)
{
    if constexpr (N == word16<T>::n) store_word(p, v);
    else
#pragma unroll
        for (int i = 0; i < N; i++) p[i] = from_f32<T>(v[i]);
}

/* Whether every row of a matrix at p with row stride ld (elements of es bytes) starts on a 16-byte
 * boundary; an absent matrix (NULL) does not stand in the way. */
static inline bool rows_on_words(const void *p, int64_t ld, size_t es)
{
    return p == NULL || ((uintptr_t)p % 16 == 0 && (ld * (int64_t)es) % 16 == 0);
}

#endif
