// Attention of one decode step over the KV cache (cpu_inference op):
//   out[b, h, j] = sum_l p[l] v[b, h, l],  p = softmax_l(scale * q[b, h, j] . k[b, h, l]), l < length, valid[b, l]
// q (B, Hkv, G, D): the G query heads that share kv head h (grouped-query
// attention folded into the query axis); k, v (Bcap, Hkv, Lcap, D): the
// caches, of which rows b < B and slots l < length are read in place.
//
// Why not scaled_dot_product_attention: with one query per head, torch's CPU
// flash kernel spends most of its time on per-block set-up and tiny sgemm
// calls (~470 us per layer of the benchmark's 8 x 8 heads x 96 slots, where
// reading the cache takes ~250 us). Here each (b, h) pair is one task: a
// pass of dot products over all slots below `length` (in blocks of 4 keys;
// masked ones are dropped after, cheaper than branching per key), an exact
// max-subtracted softmax, and a pass that accumulates p[l] v[l] in
// registers. The sums run in another order than SDPA's blocked online
// softmax, so results agree with it to fp32 rounding, not bit for bit.
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../../includes/cpu_simd.h"
#include "../../includes/ds_check.h"
#include "decode_ops.h"

namespace {

using ds_cpu::Vec;

inline float dot(const float* a, const float* b, int64_t n)
{
    Vec acc = Vec::set1(0.0f);
    int64_t i = 0;
    for (; i + Vec::kWidth <= n; i += Vec::kWidth) acc = fma(Vec::load(a + i), Vec::load(b + i), acc);
    float s = reduce_add(acc);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// s[r] = a . b[r * n] for the 4 rows r of b: four independent FMA chains, where
// one dot product at a time waits on its own chain's latency.
inline void dot4(const float* a, const float* b, int64_t n, float* s)
{
    Vec acc[4] = {Vec::set1(0.0f), Vec::set1(0.0f), Vec::set1(0.0f), Vec::set1(0.0f)};
    int64_t i = 0;
    for (; i + Vec::kWidth <= n; i += Vec::kWidth) {
        const Vec av = Vec::load(a + i);
        for (int r = 0; r < 4; ++r) acc[r] = fma(av, Vec::load(b + r * n + i), acc[r]);
    }
    for (int r = 0; r < 4; ++r) {
        s[r] = reduce_add(acc[r]);
        for (int64_t t = i; t < n; ++t) s[r] += a[t] * b[r * n + t];
    }
}

// y (D) = sum_l p[l] * v[l * D] over the slots with p[l] > 0, then scaled by inv.
// D is at most kMaxVecs vectors of accumulators (head dims up to 256 under AVX2).
constexpr int kMaxVecs = 32;

void weighted_sum(const float* p, const float* v, int64_t length, int64_t D, float inv, float* y)
{
    const int64_t nv = D / Vec::kWidth;
    if (nv <= kMaxVecs) {
        Vec acc[kMaxVecs];
        for (int64_t i = 0; i < nv; ++i) acc[i] = Vec::set1(0.0f);
        for (int64_t l = 0; l < length; ++l) {
            if (p[l] == 0.0f) continue;  // masked slot (and exp underflow, which adds nothing)
            const Vec pl = Vec::set1(p[l]);
            for (int64_t i = 0; i < nv; ++i) acc[i] = fma(pl, Vec::load(v + l * D + i * Vec::kWidth), acc[i]);
        }
        const Vec s = Vec::set1(inv);
        for (int64_t i = 0; i < nv; ++i) Vec::store(y + i * Vec::kWidth, acc[i] * s);
    } else {
        for (int64_t i = 0; i < nv * Vec::kWidth; ++i) y[i] = 0.0f;
        for (int64_t l = 0; l < length; ++l)
            for (int64_t i = 0; i < nv * Vec::kWidth; ++i) y[i] += p[l] * v[l * D + i];
        for (int64_t i = 0; i < nv * Vec::kWidth; ++i) y[i] *= inv;
    }
    for (int64_t i = nv * Vec::kWidth; i < D; ++i) {  // the tail past the last full vector
        float s = 0.0f;
        for (int64_t l = 0; l < length; ++l) s += p[l] * v[l * D + i];
        y[i] = s * inv;
    }
}

}  // namespace

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& valid,
                            int64_t length, double scale)
{
    DS_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && valid.device().is_cpu(),
             "decode_attention: q, k, v and valid must be CPU tensors");
    DS_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
             "decode_attention: q, k and v must be float32, got ", q.scalar_type(), ", ", k.scalar_type(), " and ",
             v.scalar_type());
    DS_CHECK(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes(),
             "decode_attention: q (B, Hkv, G, D) and caches k, v (Bcap, Hkv, Lcap, D) of one shape expected, got ",
             q.sizes(), ", ", k.sizes(), " and ", v.sizes());
    const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3);
    const int64_t Lcap = k.size(2);
    DS_CHECK(k.size(0) >= B && k.size(1) == H && k.size(3) == D,
             "decode_attention: the caches ", k.sizes(), " do not hold q's ", B, " rows, ", H, " kv heads and head dim ",
             D);
    DS_CHECK(length >= 1 && length <= Lcap, "decode_attention: length ", length, " outside [1, ", Lcap, "]");
    DS_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(),
             "decode_attention: q, k and v must be contiguous");
    DS_CHECK(valid.scalar_type() == at::kBool && valid.dim() == 2 && valid.size(0) == B &&
                 valid.size(1) >= length && valid.stride(1) == 1,
             "decode_attention: valid must be a bool (B, >= length) tensor with unit column stride, got ",
             valid.scalar_type(), " ", valid.sizes());
    auto out = at::empty_like(q);
    const float* qp = q.data_ptr<float>();
    const float* kp = k.data_ptr<float>();
    const float* vp = v.data_ptr<float>();
    const bool* mp = valid.data_ptr<bool>();
    const int64_t mstride = valid.stride(0);
    float* op = out.data_ptr<float>();
    const float sc = static_cast<float>(scale);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> p(length);
        for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / H, h = task % H;
            const float* kbh = kp + ((b * H + h) * Lcap) * D;
            const float* vbh = vp + ((b * H + h) * Lcap) * D;
            const bool* m = mp + b * mstride;
            for (int64_t j = 0; j < G; ++j) {
                const float* qj = qp + ((b * H + h) * G + j) * D;
                int64_t l = 0;
                for (; l + 4 <= length; l += 4) dot4(qj, kbh + l * D, D, &p[l]);
                for (; l < length; ++l) p[l] = dot(qj, kbh + l * D, D);
                float mx = -std::numeric_limits<float>::infinity();
                for (l = 0; l < length; ++l) {
                    p[l] = m[l] ? sc * p[l] : -std::numeric_limits<float>::infinity();
                    mx = std::max(mx, p[l]);
                }
                float sum = 0.0f;
                for (l = 0; l < length; ++l) {
                    p[l] = m[l] ? std::exp(p[l] - mx) : 0.0f;
                    sum += p[l];
                }
                // No valid slot (never in a decode step: the new token sees itself): zeros, not NaN.
                weighted_sum(p.data(), vbh, length, D, sum > 0.0f ? 1.0f / sum : 0.0f,
                             op + ((b * H + h) * G + j) * D);
            }
        }
    });
    return out;
}
