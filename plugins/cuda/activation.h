/* Element-wise activations and their derivatives, shared by activation_* and glu_* kernels. */
#ifndef FINCH_GPU_ACTIVATION_H
#define FINCH_GPU_ACTIVATION_H

#include "gpu_plugin.h"

__device__ __forceinline__ float act_forward(int act, float param, float x)
{
    switch (act) {
    case FINCH_ACT_SILU: return x / (1.0f + expf(-x));
    case FINCH_ACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case FINCH_ACT_GELU_TANH: {
        float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
    case FINCH_ACT_RELU: return x > 0.0f ? x : 0.0f;
    default: return param * tanhf(x / param); /* FINCH_ACT_SOFTCAP */
    }
}

/* d act(x) / dx */
__device__ __forceinline__ float act_derivative(int act, float param, float x)
{
    switch (act) {
    case FINCH_ACT_SILU: {
        float s = 1.0f / (1.0f + expf(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    case FINCH_ACT_GELU_ERF:
        return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
    case FINCH_ACT_GELU_TANH: {
        float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        float t = tanhf(u);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * 0.79788456080286536f * (1.0f + 3.0f * 0.044715f * x * x);
    }
    case FINCH_ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
    default: {
        float t = tanhf(x / param);
        return 1.0f - t * t;
    }
    }
}

#endif
