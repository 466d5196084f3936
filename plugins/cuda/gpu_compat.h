/* The thin layer that lets the same kernel sources build with nvcc (CUDA) and hipcc (HIP/ROCm).
 * Plugin sources use only the gpu* names below, never cuda* or hip* directly; vendor-specific
 * fast paths, if any, sit behind #if FINCH_GPU_CUDA / FINCH_GPU_HIP. FINCH_GPU_BLASLT says whether
 * the gpublasLt* names (cuBLASLt, or hipBLASLt where the HIP build found it) exist. */
#ifndef FINCH_GPU_COMPAT_H
#define FINCH_GPU_COMPAT_H

#if defined(__HIPCC__) || defined(FINCH_GPU_HIP)
#undef FINCH_GPU_HIP
#ifndef FINCH_GPU_BLASLT
#define FINCH_GPU_BLASLT 0 /* GEMMs on the plugin's tiled kernel (no hipBLASLt in Debian 12) */
#endif
#define FINCH_GPU_HIP 1
#define FINCH_GPU_CUDA 0
#define FINCH_GPU_API "HIP"
#define FINCH_GPU_PLUGIN_NAME "hip"
#define FINCH_GPU_DRIVER_MISSING "the amdgpu kernel driver (/dev/kfd) is not available"
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#if FINCH_GPU_BLASLT
#include <hipblaslt/hipblaslt.h>
#endif

/* ROCm 6 has hip_bf16.h with CUDA's bfloat16 names; ROCm 5 (Debian 12) only hip_bfloat16, whose
 * conversions (round to nearest even, NaN kept) stand in for them here. */
#if __has_include(<hip/hip_bf16.h>)
#include <hip/hip_bf16.h>
typedef __hip_bfloat16 gpu_bf16;
#else
#include <hip/hip_bfloat16.h>
typedef hip_bfloat16 gpu_bf16;
__host__ __device__ static inline float __bfloat162float(hip_bfloat16 v) { return (float)v; }
__host__ __device__ static inline hip_bfloat16 __float2bfloat16(float v) { return hip_bfloat16(v); }
#endif

typedef hipError_t gpuError_t;
typedef hipStream_t gpuStream_t;
typedef hipDeviceProp_t gpuDeviceProp;
typedef hipMemPool_t gpuMemPool_t;
typedef __half gpu_f16;
#define gpuSuccess hipSuccess
#define gpuErrorMemoryAllocation hipErrorOutOfMemory
#define gpuErrorNoDevice hipErrorNoDevice
#define gpuErrorInsufficientDriver hipErrorInsufficientDriver
#define gpuGetErrorString hipGetErrorString
#define gpuGetErrorName hipGetErrorName
#define gpuGetLastError hipGetLastError
#define gpuDriverGetVersion hipDriverGetVersion
#define gpuRuntimeGetVersion hipRuntimeGetVersion
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuGetDeviceProperties hipGetDeviceProperties
#define gpuSetDevice hipSetDevice
#define gpuGetDevice hipGetDevice
#define gpuMemGetInfo hipMemGetInfo
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuMallocAsync hipMallocAsync
#define gpuFreeAsync hipFreeAsync
#define gpuDeviceGetDefaultMemPool hipDeviceGetDefaultMemPool
#define gpuMemPoolSetAttribute hipMemPoolSetAttribute
#define gpuMemPoolAttrReleaseThreshold hipMemPoolAttrReleaseThreshold
#define gpuMemPoolTrimTo hipMemPoolTrimTo
#define gpuMemcpyAsync hipMemcpyAsync
#define gpuMallocHost(p, n) hipHostMalloc(p, n, hipHostMallocDefault)
#define gpuFreeHost hipHostFree
#define gpuMemcpy2DAsync hipMemcpy2DAsync
#define gpuMemsetAsync hipMemsetAsync
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define gpuStreamCreateWithFlags hipStreamCreateWithFlags
#define gpuStreamNonBlocking hipStreamNonBlocking
#define gpuStreamDestroy hipStreamDestroy
#define gpuStreamSynchronize hipStreamSynchronize
#define gpuGraph_t hipGraph_t
#define gpuGraphExec_t hipGraphExec_t
#define gpuStreamBeginCapture hipStreamBeginCapture
#define gpuStreamCaptureModeThreadLocal hipStreamCaptureModeThreadLocal
#define gpuStreamEndCapture hipStreamEndCapture
#define gpuGraphInstantiate(exec, graph, flags) hipGraphInstantiate(exec, graph, NULL, NULL, 0)
#define gpuGraphLaunch hipGraphLaunch
#define gpuGraphDestroy hipGraphDestroy
#define gpuGraphExecDestroy hipGraphExecDestroy
#define gpuEvent_t hipEvent_t
#define gpuEventCreate hipEventCreate
#define gpuEventDestroy hipEventDestroy
#define gpuEventRecord hipEventRecord
#define gpuEventSynchronize hipEventSynchronize
#define gpuEventElapsedTime hipEventElapsedTime
#define gpuEventCreateWithFlags hipEventCreateWithFlags
#define gpuEventDisableTiming hipEventDisableTiming
#define gpuStreamWaitEvent hipStreamWaitEvent
#define gpuDeviceSynchronize hipDeviceSynchronize
#define gpuFuncSetAttribute(f, a, v) hipFuncSetAttribute((const void *)(f), a, v)
#define gpuFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
/* Device code only: 64 on CDNA (gfx9), 32 on RDNA (gfx10+) in clang's default wave32. Host code
 * reads the device's props.warpSize instead, since one module holds code for both. */
#define FINCH_WARP_SIZE warpSize
#define gpu_shfl_xor(v, lane_mask) __shfl_xor((v), (lane_mask))

#if FINCH_GPU_BLASLT
/* hipBLASLt mirrors cuBLASLt name for name (ROCm >= 6.1 names). Not compiled by any build yet:
 * plugins/hip links no hipBLASLt, which Debian 12 does not package. */
typedef hipblasLtHandle_t gpublasLtHandle_t;
typedef hipblasLtMatmulDesc_t gpublasLtMatmulDesc_t;
typedef hipblasLtMatrixLayout_t gpublasLtMatrixLayout_t;
typedef hipblasLtMatmulPreference_t gpublasLtMatmulPreference_t;
typedef hipblasLtMatmulHeuristicResult_t gpublasLtMatmulHeuristicResult_t;
typedef hipblasStatus_t gpublasStatus_t;
typedef hipDataType gpuDataType;
#define GPUBLAS_STATUS_SUCCESS HIPBLAS_STATUS_SUCCESS
#define GPUBLAS_OP_N HIPBLAS_OP_N
#define GPUBLAS_OP_T HIPBLAS_OP_T
#define GPUBLAS_COMPUTE_32F HIPBLAS_COMPUTE_32F
#define GPU_R_32F HIP_R_32F
#define GPU_R_16BF HIP_R_16BF
#define GPU_R_16F HIP_R_16F
#define GPUBLASLT_MATMUL_DESC_TRANSA HIPBLASLT_MATMUL_DESC_TRANSA
#define GPUBLASLT_MATMUL_DESC_TRANSB HIPBLASLT_MATMUL_DESC_TRANSB
#define GPUBLASLT_MATRIX_LAYOUT_BATCH_COUNT HIPBLASLT_MATRIX_LAYOUT_BATCH_COUNT
#define GPUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET HIPBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET
#define GPUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES HIPBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
#define gpublasLtCreate hipblasLtCreate
#define gpublasLtDestroy hipblasLtDestroy
#define gpublasLtMatmulDescCreate hipblasLtMatmulDescCreate
#define gpublasLtMatmulDescDestroy hipblasLtMatmulDescDestroy
#define gpublasLtMatmulDescSetAttribute hipblasLtMatmulDescSetAttribute
#define gpublasLtMatrixLayoutCreate hipblasLtMatrixLayoutCreate
#define gpublasLtMatrixLayoutDestroy hipblasLtMatrixLayoutDestroy
#define gpublasLtMatrixLayoutSetAttribute hipblasLtMatrixLayoutSetAttribute
#define gpublasLtMatmulPreferenceCreate hipblasLtMatmulPreferenceCreate
#define gpublasLtMatmulPreferenceDestroy hipblasLtMatmulPreferenceDestroy
#define gpublasLtMatmulPreferenceSetAttribute hipblasLtMatmulPreferenceSetAttribute
#define gpublasLtMatmulAlgoGetHeuristic hipblasLtMatmulAlgoGetHeuristic
#define gpublasLtMatmul hipblasLtMatmul
#endif /* FINCH_GPU_BLASLT */

#else
#define FINCH_GPU_CUDA 1
#define FINCH_GPU_HIP 0
#define FINCH_GPU_API "CUDA"
#define FINCH_GPU_PLUGIN_NAME "cuda"
#define FINCH_GPU_DRIVER_MISSING "the driver library (libcuda.so.1) was not found"
#undef FINCH_GPU_BLASLT
#define FINCH_GPU_BLASLT 1
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cublasLt.h>

typedef cudaError_t gpuError_t;
typedef cudaStream_t gpuStream_t;
typedef cudaDeviceProp gpuDeviceProp;
typedef cudaMemPool_t gpuMemPool_t;
typedef __nv_bfloat16 gpu_bf16;
typedef __half gpu_f16;
#define gpuSuccess cudaSuccess
#define gpuErrorMemoryAllocation cudaErrorMemoryAllocation
#define gpuErrorNoDevice cudaErrorNoDevice
#define gpuErrorInsufficientDriver cudaErrorInsufficientDriver
#define gpuGetErrorString cudaGetErrorString
#define gpuGetErrorName cudaGetErrorName
#define gpuGetLastError cudaGetLastError
#define gpuDriverGetVersion cudaDriverGetVersion
#define gpuRuntimeGetVersion cudaRuntimeGetVersion
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuGetDeviceProperties cudaGetDeviceProperties
#define gpuSetDevice cudaSetDevice
#define gpuGetDevice cudaGetDevice
#define gpuMemGetInfo cudaMemGetInfo
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuMallocAsync cudaMallocAsync
#define gpuFreeAsync cudaFreeAsync
#define gpuDeviceGetDefaultMemPool cudaDeviceGetDefaultMemPool
#define gpuMemPoolSetAttribute cudaMemPoolSetAttribute
#define gpuMemPoolAttrReleaseThreshold cudaMemPoolAttrReleaseThreshold
#define gpuMemPoolTrimTo cudaMemPoolTrimTo
#define gpuMemcpyAsync cudaMemcpyAsync
#define gpuMallocHost(p, n) cudaMallocHost(p, n)
#define gpuFreeHost cudaFreeHost
#define gpuMemcpy2DAsync cudaMemcpy2DAsync
#define gpuMemsetAsync cudaMemsetAsync
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define gpuStreamCreateWithFlags cudaStreamCreateWithFlags
#define gpuStreamNonBlocking cudaStreamNonBlocking
#define gpuStreamDestroy cudaStreamDestroy
#define gpuStreamSynchronize cudaStreamSynchronize
#define gpuGraph_t cudaGraph_t
#define gpuGraphExec_t cudaGraphExec_t
#define gpuStreamBeginCapture cudaStreamBeginCapture
#define gpuStreamCaptureModeThreadLocal cudaStreamCaptureModeThreadLocal
#define gpuStreamEndCapture cudaStreamEndCapture
#define gpuGraphInstantiate(exec, graph, flags) cudaGraphInstantiate(exec, graph, flags)
#define gpuGraphLaunch cudaGraphLaunch
#define gpuGraphDestroy cudaGraphDestroy
#define gpuGraphExecDestroy cudaGraphExecDestroy
#define gpuEvent_t cudaEvent_t
#define gpuEventCreate cudaEventCreate
#define gpuEventDestroy cudaEventDestroy
#define gpuEventRecord cudaEventRecord
#define gpuEventSynchronize cudaEventSynchronize
#define gpuEventElapsedTime cudaEventElapsedTime
#define gpuEventCreateWithFlags cudaEventCreateWithFlags
#define gpuEventDisableTiming cudaEventDisableTiming
#define gpuStreamWaitEvent cudaStreamWaitEvent
#define gpuDeviceSynchronize cudaDeviceSynchronize
#define gpuFuncSetAttribute(f, a, v) cudaFuncSetAttribute((f), a, v)
#define gpuFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize
#define FINCH_WARP_SIZE 32
#define gpu_shfl_xor(v, lane_mask) __shfl_xor_sync(0xffffffffu, (v), (lane_mask))

typedef cublasLtHandle_t gpublasLtHandle_t;
typedef cublasLtMatmulDesc_t gpublasLtMatmulDesc_t;
typedef cublasLtMatrixLayout_t gpublasLtMatrixLayout_t;
typedef cublasLtMatmulPreference_t gpublasLtMatmulPreference_t;
typedef cublasLtMatmulHeuristicResult_t gpublasLtMatmulHeuristicResult_t;
typedef cublasStatus_t gpublasStatus_t;
typedef cudaDataType_t gpuDataType;
#define GPUBLAS_STATUS_SUCCESS CUBLAS_STATUS_SUCCESS
#define GPUBLAS_OP_N CUBLAS_OP_N
#define GPUBLAS_OP_T CUBLAS_OP_T
#define GPUBLAS_COMPUTE_32F CUBLAS_COMPUTE_32F
#define GPU_R_32F CUDA_R_32F
#define GPU_R_16BF CUDA_R_16BF
#define GPU_R_16F CUDA_R_16F
#define GPUBLASLT_MATMUL_DESC_TRANSA CUBLASLT_MATMUL_DESC_TRANSA
#define GPUBLASLT_MATMUL_DESC_TRANSB CUBLASLT_MATMUL_DESC_TRANSB
#define GPUBLASLT_MATRIX_LAYOUT_BATCH_COUNT CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT
#define GPUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET
#define GPUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
#define gpublasLtCreate cublasLtCreate
#define gpublasLtDestroy cublasLtDestroy
#define gpublasLtMatmulDescCreate cublasLtMatmulDescCreate
#define gpublasLtMatmulDescDestroy cublasLtMatmulDescDestroy
#define gpublasLtMatmulDescSetAttribute cublasLtMatmulDescSetAttribute
#define gpublasLtMatrixLayoutCreate cublasLtMatrixLayoutCreate
#define gpublasLtMatrixLayoutDestroy cublasLtMatrixLayoutDestroy
#define gpublasLtMatrixLayoutSetAttribute cublasLtMatrixLayoutSetAttribute
#define gpublasLtMatmulPreferenceCreate cublasLtMatmulPreferenceCreate
#define gpublasLtMatmulPreferenceDestroy cublasLtMatmulPreferenceDestroy
#define gpublasLtMatmulPreferenceSetAttribute cublasLtMatmulPreferenceSetAttribute
#define gpublasLtMatmulAlgoGetHeuristic cublasLtMatmulAlgoGetHeuristic
#define gpublasLtMatmul cublasLtMatmul
#endif

#endif
