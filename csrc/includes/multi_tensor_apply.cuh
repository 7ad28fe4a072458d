// Multi-tensor apply: run one elementwise functor over many tensors with few
// kernel launches.
//
// An optimizer step touches hundreds of small tensors; one launch per tensor
// would be dominated by launch latency. Instead the host packs the addresses
// of up to kMaxTensors<depth> tensors and a (tensor, chunk) work item per
// block into a struct passed *by value* as a kernel argument (kept below the
// classic 4 KiB argument limit), so a single launch covers many tensors and
// every block knows which chunk of which tensor it owns.
//
// Plain CUDA only (no torch headers): the caller passes raw device pointers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ds_kernels {

// How many tensors fit in one launch for a given number of lists ("depth"),
// and how many blocks (work items) one launch carries. Chosen so that
// sizeof(TensorListMeta<depth>) stays under 4 KiB for depth 1..5.
template <int depth>
struct MtaLimits;
template <>
struct MtaLimits<1> { static constexpr int kMaxTensors = 110; };
template <>
struct MtaLimits<2> { static constexpr int kMaxTensors = 64; };
template <>
struct MtaLimits<3> { static constexpr int kMaxTensors = 48; };
template <>
struct MtaLimits<4> { static constexpr int kMaxTensors = 36; };
template <>
struct MtaLimits<5> { static constexpr int kMaxTensors = 30; };

constexpr int kMtaMaxBlocks = 320;

template <int depth>
struct TensorListMeta {
    void* addresses[depth][MtaLimits<depth>::kMaxTensors];
    int64_t numels[MtaLimits<depth>::kMaxTensors];
    unsigned char block_to_tensor[kMtaMaxBlocks];  // index into addresses[*][]
    int block_to_chunk[kMtaMaxBlocks];             // chunk index inside that tensor
};

static_assert(sizeof(TensorListMeta<4>) < 4096, "kernel argument must stay under 4 KiB");
static_assert(sizeof(TensorListMeta<5>) < 4096, "kernel argument must stay under 4 KiB");

template <int depth, typename Functor, typename... Args>
__global__ void multi_tensor_apply_kernel(int64_t chunk_size,
                                          const int* __restrict__ noop_flag,
                                          TensorListMeta<depth> meta,
                                          Functor functor,
                                          Args... args)
{
    functor(chunk_size, noop_flag, meta, args...);
}

// Launches `functor` over lists[d][t] (d < depth, t < n_tensors); every list
// holds n_tensors tensors and tensor t of each list has numels[t] elements.
// Empty tensors are skipped. Returns the first launch error, or cudaSuccess.
template <int depth, typename Functor, typename... Args>
cudaError_t multi_tensor_apply(int block_size,
                               int64_t chunk_size,
                               const int* noop_flag,
                               int n_tensors,
                               void* const* const* lists,
                               const int64_t* numels,
                               cudaStream_t stream,
                               Functor functor,
                               Args... args)
{
    constexpr int kMaxTensors = MtaLimits<depth>::kMaxTensors;
    TensorListMeta<depth> meta;
    int loaded = 0;  // tensors currently described by meta
    int blocks = 0;  // work items currently described by meta

    for (int t = 0; t < n_tensors; ++t) {
        if (numels[t] == 0) continue;
        for (int d = 0; d < depth; ++d) meta.addresses[d][loaded] = lists[d][t];
        meta.numels[loaded] = numels[t];
        ++loaded;

        const int64_t chunks = (numels[t] + chunk_size - 1) / chunk_size;
        for (int64_t c = 0; c < chunks; ++c) {
            meta.block_to_tensor[blocks] = static_cast<unsigned char>(loaded - 1);
            meta.block_to_chunk[blocks] = static_cast<int>(c);
            ++blocks;

            const bool last_chunk = (c == chunks - 1);
            const bool tensors_full = (loaded == kMaxTensors) && last_chunk;
            if (!tensors_full && blocks < kMtaMaxBlocks) continue;

            multi_tensor_apply_kernel<depth><<<blocks, block_size, 0, stream>>>(
                chunk_size, noop_flag, meta, functor, args...);
            const cudaError_t err = cudaGetLastError();
            if (err != cudaSuccess) return err;
            blocks = 0;
            if (last_chunk) {
                loaded = 0;
            } else {
                // The current tensor still has chunks left: it becomes the
                // first entry of the next launch.
                for (int d = 0; d < depth; ++d) meta.addresses[d][0] = meta.addresses[d][loaded - 1];
                meta.numels[0] = meta.numels[loaded - 1];
                loaded = 1;
            }
        }
    }
    if (blocks > 0) {
        multi_tensor_apply_kernel<depth><<<blocks, block_size, 0, stream>>>(
            chunk_size, noop_flag, meta, functor, args...);
        return cudaGetLastError();
    }
    return cudaSuccess;
}

}  // namespace ds_kernels
