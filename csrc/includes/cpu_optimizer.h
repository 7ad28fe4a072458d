// The elementwise driver shared by the CPU optimizers: tiling, OpenMP,
// unrolling, the scalar tail, and the dispatch from torch dtypes to storage
// types. An optimizer supplies only an "Op": its per-element maths written
// once as a template over the vector type (see cpu_simd.h), e.g.
//
//   struct MyOp {
//       static constexpr int kStates = 2;           // 1 or 2 state buffers
//       template <class V> void apply(V& p, V g, V& s0, V& s1) const;
//   };
//
// and calls ds_cpu::apply_update(op, "name", params, grads, {s0, s1}, copy).
#pragma once

// The light ATen headers, not <torch/extension.h>: they halve the JIT build.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <mutex>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "cpu_simd.h"
#include "ds_check.h"

namespace ds_cpu {

// Elements per OpenMP work item. Every path (AVX512, AVX2, scalar) uses the
// same tiles, so the split of work, and the point where the scalar tail
// starts, depend only on the tensor size. 16K elements keep one tile's
// streams (at most 7 of them: p, g, two states and a copy) in about 400 KB,
// inside a core's L2, and make enough tiles to balance two threads from
// roughly 32K elements up; smaller tensors run on the calling thread, where
// an OpenMP fork would cost more than it saves.
constexpr int64_t kTile = 16384;

// How many vectors one main-loop iteration handles. Four independent
// dependency chains hide the latency of sqrt/div behind the loads.
constexpr int kUnroll = 4;

template <class V, class Op, class P, class G, class S, class C>
inline void update_range(const Op& op_in, P* p, const G* g, S* s0, S* s1, C* c, int64_t begin, int64_t end)
{
    // A local copy lets the compiler keep the constants in registers: the
    // stores below could otherwise alias the caller's Op.
    const Op op = op_in;
    constexpr int W = V::kWidth;
    constexpr bool kTwoStates = Op::kStates > 1;
    constexpr bool kCopy = !std::is_same<C, no_copy>::value;
    int64_t i = begin;
    for (; i + kUnroll * W <= end; i += kUnroll * W) {
        V pv[kUnroll], gv[kUnroll], a[kUnroll], b[kUnroll];
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t j = i + u * W;
            pv[u] = V::load(p + j);
            gv[u] = V::load(g + j);
            a[u] = V::load(s0 + j);
            if constexpr (kTwoStates) b[u] = V::load(s1 + j);
        }
        for (int u = 0; u < kUnroll; ++u) op.template apply<V>(pv[u], gv[u], a[u], b[u]);
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t j = i + u * W;
            V::store(p + j, pv[u]);
            V::store(s0 + j, a[u]);
            if constexpr (kTwoStates) V::store(s1 + j, b[u]);
            if constexpr (kCopy) V::store(c + j, pv[u]);
        }
    }
    // Whole vectors left over, then single elements.
    for (; i + W <= end; i += W) {
        V pv = V::load(p + i), gv = V::load(g + i), a = V::load(s0 + i), b{};
        if constexpr (kTwoStates) b = V::load(s1 + i);
        op.template apply<V>(pv, gv, a, b);
        V::store(p + i, pv);
        V::store(s0 + i, a);
        if constexpr (kTwoStates) V::store(s1 + i, b);
        if constexpr (kCopy) V::store(c + i, pv);
    }
    for (; i < end; ++i) {
        VecScalar pv = VecScalar::load(p + i), gv = VecScalar::load(g + i), a = VecScalar::load(s0 + i), b{};
        if constexpr (kTwoStates) b = VecScalar::load(s1 + i);
        op.template apply<VecScalar>(pv, gv, a, b);
        VecScalar::store(p + i, pv);
        VecScalar::store(s0 + i, a);
        if constexpr (kTwoStates) VecScalar::store(s1 + i, b);
        if constexpr (kCopy) VecScalar::store(c + i, pv);
    }
}

template <class Op, class P, class G, class S, class C>
void update_tiles(const Op& op, P* p, const G* g, S* s0, S* s1, C* c, int64_t n)
{
    const int64_t tiles = (n + kTile - 1) / kTile;
    // Follow torch.set_num_threads (torch and this extension share libgomp's
    // pool, but an explicit count keeps the two in step even if they did not).
    const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), tiles));
    if (threads <= 1) {
        update_range<Vec>(op, p, g, s0, s1, c, 0, n);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
        const int64_t begin = t * kTile;
        update_range<Vec>(op, p, g, s0, s1, c, begin, std::min(n, begin + kTile));
    }
}

// ---------------------------------------------------------------------------
// torch dtype -> storage type dispatch.

template <class T>
struct type_tag {
    using type = T;
};

// Calls f(type_tag<T>{}) with T the storage type of a fp32/fp16/bf16 dtype.
template <class F>
void with_storage_type(at::ScalarType dtype, const char* what, F&& f)
{
    switch (dtype) {
        case at::kFloat: f(type_tag<float>{}); break;
        case at::kHalf: f(type_tag<half_bits>{}); break;
        case at::kBFloat16: f(type_tag<bf16_bits>{}); break;
        default: DS_CHECK(false, what, " must be float32, float16 or bfloat16, got ", dtype);
    }
}

inline void check_buffer(const at::Tensor& t, const at::Tensor& params, const char* opname, const char* what)
{
    DS_CHECK(t.device().is_cpu(), opname, ": ", what, " must be a CPU tensor, got device ", t.device());
    DS_CHECK(t.is_contiguous(), opname, ": ", what, " must be contiguous");
    DS_CHECK(t.numel() == params.numel(), opname, ": ", what, " has ", t.numel(), " elements but params has ",
                params.numel());
}

// One optimizer update over one tensor: p, g and the Op's states, plus an
// optional 16-bit copy of the updated parameter written in the same pass.
// States are fp32 or the parameter's own 16-bit dtype; grads may be any of
// fp32/fp16/bf16 independently of the parameter.
template <class Op>
void apply_update(const Op& op, const char* opname, const at::Tensor& params, const at::Tensor& grads,
                  const std::vector<at::Tensor>& states, const at::Tensor* copy)
{
    DS_CHECK(static_cast<int>(states.size()) == Op::kStates, opname, ": expected ", Op::kStates,
                " state tensors");
    check_buffer(params, params, opname, "params");
    check_buffer(grads, params, opname, "grads");
    const at::ScalarType state_dtype = states[0].scalar_type();
    for (const at::Tensor& s : states) {
        check_buffer(s, params, opname, "optimizer state");
        DS_CHECK(s.scalar_type() == state_dtype, opname, ": all optimizer states must share one dtype");
    }
    DS_CHECK(state_dtype == at::kFloat || state_dtype == params.scalar_type(), opname,
                ": optimizer states must be float32 or the parameter dtype (", params.scalar_type(), "), got ",
                state_dtype);
    if (copy != nullptr) {
        check_buffer(*copy, params, opname, "params_copy");
        DS_CHECK(copy->scalar_type() == at::kHalf || copy->scalar_type() == at::kBFloat16, opname,
                    ": params_copy must be float16 or bfloat16, got ", copy->scalar_type());
    }
    const int64_t n = params.numel();
    if (n == 0) return;
    void* s1_ptr = Op::kStates > 1 ? states[1].data_ptr() : nullptr;

    with_storage_type(params.scalar_type(), "params", [&](auto ptag) {
        using P = typename decltype(ptag)::type;
        with_storage_type(grads.scalar_type(), "grads", [&](auto gtag) {
            using G = typename decltype(gtag)::type;
            // Only fp32 or the parameter's own type: keeps the instantiations
            // to the pairs that exist (fp32/fp32, 16/fp32, 16/16).
            auto run_with_state = [&](auto stag) {
                using S = typename decltype(stag)::type;
                P* p = static_cast<P*>(params.data_ptr());
                const G* g = static_cast<const G*>(grads.data_ptr());
                S* s0 = static_cast<S*>(states[0].data_ptr());
                S* s1 = static_cast<S*>(s1_ptr);
                if (copy == nullptr) {
                    update_tiles(op, p, g, s0, s1, static_cast<no_copy*>(nullptr), n);
                } else if (copy->scalar_type() == at::kHalf) {
                    update_tiles(op, p, g, s0, s1, static_cast<half_bits*>(copy->data_ptr()), n);
                } else {
                    update_tiles(op, p, g, s0, s1, static_cast<bf16_bits*>(copy->data_ptr()), n);
                }
            };
            if (state_dtype == at::kFloat) {
                run_with_state(type_tag<float>{});
            } else {
                run_with_state(type_tag<P>{});
            }
        });
    });
}

// ---------------------------------------------------------------------------
// Optimizer objects by id. The Python face creates one per instance (its id
// comes from a per-class counter) and destroys it in __del__; the C++ side
// keeps what create_* was given (today: the adamw flag and verbosity) so the
// update calls stay as DeepSpeed's bindings define them.
template <class Config>
class Registry {
public:
    void create(int id, const Config& config)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        configs_[id] = config;
    }
    Config get(int id, const char* opname) const
    {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = configs_.find(id);
        DS_CHECK(it != configs_.end(), opname, ": no optimizer with id ", id, " (create it first)");
        return it->second;
    }
    void destroy(int id)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        configs_.erase(id);
    }

private:
    mutable std::mutex mutex_;
    std::unordered_map<int, Config> configs_;
};

// Function-local static: built on first use, so loading the extension does no work.
template <class Config>
Registry<Config>& registry()
{
    static Registry<Config> instance;
    return instance;
}

}  // namespace ds_cpu
