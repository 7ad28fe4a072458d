// Skinny fp32 linear for CPU decode steps (cpu_inference op; bound in bindings.cpp):
//   y (M, N) = x (M, K) . w (N, K)^T (+ bias (N)),   M small (a decode step's rows).
//
// Why not MKL: with a handful of rows the product is bound by how fast w
// streams from memory, and sgemm repacks w on every call; even on a pre-packed
// w (mkl::_mkl_linear) it streams at ~65% of what one core can read. Here w
// is read once, in its own (N, K) row-major layout, as one sequential stream:
// each tile takes NB adjacent rows of w and dots them with up to MB rows of x
// (which sit in L1), keeping MB x NB vector accumulators in registers. When M
// exceeds MB the same w tile is reused from L1 for the next block of x rows,
// so memory still sees w once.
//
// The products are the same fp32 multiply-adds as F.linear, summed in another
// order (per-lane partial sums, then the lanes), so results agree with F.linear
// to fp32 rounding (the test bound is sum_k |x_k w_k| * K * eps), not bit for bit.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

#include "../../includes/cpu_simd.h"
#include "../../includes/ds_check.h"
#include "decode_ops.h"

namespace {

using ds_cpu::Vec;

// Registers: MB x NB accumulators + NB w vectors + one x vector. AVX512 has 32
// vector registers and takes 8 x 2 tiles (19 live). AVX2 has 16 and takes
// 4 x 2 (11 live): each k step then loads 6 vectors for 8 FMAs, where an
// 8 x 1 tile loaded 9 for 8. On a core with one vector load and one FMA per
// cycle (Zen 1 splits both into two 128-bit halves) the 8 x 1 tile was bound
// by its loads, at ~75% of sgemm's FMA rate; a decode step with 8 or 16 rows
// is compute-bound there (measured on a 2-core EPYC VM: 15 GFMA/s sgemm
// against 14 GB/s of reads, and a w byte feeds 2-4 FMAs).
constexpr int kMB = Vec::kWidth >= 16 ? 8 : 4;
constexpr int kNB = 2;

#if defined(__AVX512__)
// The 16 lane sums of a0..a15 in one vector, lane 4 * (i % 4) + i / 4 holding a_i's:
// four rounds of shuffle-and-add that halve the partial sums per accumulator,
// 45 instructions where 16 separate reductions take ~130 (they would cost a
// quarter of the FMA port time of a K = 512 tile).
inline __m512 reduce16(const Vec* a)
{
    __m512 c[8], e[4], g[2];
    for (int i = 0; i < 8; ++i)  // [a.q0 + a.q2, a.q1 + a.q3 | b.q0 + b.q2, b.q1 + b.q3] by 128-bit quarters
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i].v, a[2 * i + 1].v, 0x44),
                             _mm512_shuffle_f32x4(a[2 * i].v, a[2 * i + 1].v, 0xEE));
    for (int i = 0; i < 4; ++i)  // quarter t of e[i] holds 4 partial sums of a[4i + t]
        e[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; ++i)  // within each quarter: 2 partial sums of each of two accumulators
        g[i] = _mm512_add_ps(_mm512_shuffle_ps(e[2 * i], e[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(e[2 * i], e[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], 0x88), _mm512_shuffle_ps(g[0], g[1], 0xDD));
}
#elif defined(__AVX256__)
// The 8 lane sums of a0..a7 in one vector, lane i holding a_i's: two rounds of
// horizontal adds, then the two 128-bit halves added, 7 adds where 8 separate
// reductions take ~40 instructions.
inline __m256 reduce8(const Vec* a)
{
    const __m256 h01 = _mm256_hadd_ps(a[0].v, a[1].v), h23 = _mm256_hadd_ps(a[2].v, a[3].v);
    const __m256 h45 = _mm256_hadd_ps(a[4].v, a[5].v), h67 = _mm256_hadd_ps(a[6].v, a[7].v);
    const __m256 lo = _mm256_hadd_ps(h01, h23), hi = _mm256_hadd_ps(h45, h67);  // [a0..a3 | a0..a3] halves
    return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}
#endif

// y[m, j] = bias[j] + sum_k x[m, k] w[j, k] from the lane accumulators acc[m * NB + j]
// and the scalar tail k in [k0, K).
template <int MB, int NB>
inline void finish(const Vec* acc, const float* x, int64_t K, int64_t k0, const float* w, const float* bias, float* y,
                   int64_t N)
{
    float sums[MB * NB];
#if defined(__AVX512__)
    if constexpr (MB * NB == 16) {
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, reduce16(acc));
        for (int i = 0; i < 16; ++i) sums[i] = lanes[4 * (i % 4) + i / 4];
    } else
#elif defined(__AVX256__)
    if constexpr (MB * NB == 8) {
        _mm256_storeu_ps(sums, reduce8(acc));
    } else
#endif
    {
        for (int i = 0; i < MB * NB; ++i) sums[i] = reduce_add(acc[i]);
    }
    for (int m = 0; m < MB; ++m) {
        for (int j = 0; j < NB; ++j) {
            float s = sums[m * NB + j];
            for (int64_t t = k0; t < K; ++t) s += x[m * K + t] * w[j * K + t];
            y[m * N + j] = bias ? s + bias[j] : s;
        }
    }
}

// How far ahead (in floats) the tile asks for its w rows, and into which
// cache. Each tile has only NB streams and does MB FMAs per w vector: too few
// loads in flight for the hardware prefetcher alone to keep memory busy
// (measured for M = 8 on our Xeon: 6.5 GB/s without prefetches, ~10 GB/s
// prefetching 2 KB ahead into L1, ~11-12 GB/s 4 KB ahead into L2, whose
// request queue holds about three times as many misses as L1's fill buffers).
constexpr int64_t kPrefetch = 1024;

template <int MB, int NB>
inline void tile(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N)
{
    Vec acc[MB * NB];
    for (int i = 0; i < MB * NB; ++i) acc[i] = Vec::set1(0.0f);
    int64_t k = 0;
    for (; k + Vec::kWidth <= K; k += Vec::kWidth) {
        Vec wv[NB];
        for (int j = 0; j < NB; ++j) {
#if defined(__AVX512__) || defined(__AVX256__)
            _mm_prefetch(reinterpret_cast<const char*>(w + j * K + k + kPrefetch), _MM_HINT_T1);
#endif
            wv[j] = Vec::load(w + j * K + k);
        }
        for (int m = 0; m < MB; ++m) {
            Vec xv = Vec::load(x + m * K + k);
#if defined(__AVX512__)
            // Keep x in a register: folded into each FMA as a memory operand it would be
            // loaded NB times, and loads, not FMAs, would bound the tile.
            asm("" : "+v"(xv.v));
#elif defined(__AVX256__)
            asm("" : "+x"(xv.v));
#endif
            for (int j = 0; j < NB; ++j) acc[m * NB + j] = fma(xv, wv[j], acc[m * NB + j]);
        }
    }
    finish<MB, NB>(acc, x, K, k, w, bias, y, N);
}

// All M rows of x against NB rows of w (starting at w), in blocks of at most kMB rows.
template <int NB>
void column_tile(const float* x, int64_t M, int64_t K, const float* w, const float* bias, float* y, int64_t N)
{
    int64_t m = 0;
    for (; m + kMB <= M; m += kMB) tile<kMB, NB>(x + m * K, K, w, bias, y + m * N, N);
    const float* xr = x + m * K;
    float* yr = y + m * N;
    switch (M - m) {  // the last partial block, with its exact row count
        case 7: tile<7, NB>(xr, K, w, bias, yr, N); break;
        case 6: tile<6, NB>(xr, K, w, bias, yr, N); break;
        case 5: tile<5, NB>(xr, K, w, bias, yr, N); break;
        case 4: tile<4, NB>(xr, K, w, bias, yr, N); break;
        case 3: tile<3, NB>(xr, K, w, bias, yr, N); break;
        case 2: tile<2, NB>(xr, K, w, bias, yr, N); break;
        case 1: tile<1, NB>(xr, K, w, bias, yr, N); break;
        default: break;
    }
}

}  // namespace

// x (M, K), w (N, K), bias (N) or undefined -> (M, N); fp32, contiguous, CPU.
at::Tensor decode_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b)
{
    DS_CHECK(x.device().is_cpu() && w.device().is_cpu(), "decode_linear: x and w must be CPU tensors");
    DS_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
             "decode_linear: x and w must be float32, got ", x.scalar_type(), " and ", w.scalar_type());
    DS_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
             "decode_linear: x (M, K) and w (N, K) expected, got ", x.sizes(), " and ", w.sizes());
    DS_CHECK(x.is_contiguous() && w.is_contiguous(), "decode_linear: x and w must be contiguous");
    const bool has_bias = b.has_value() && b->defined();
    if (has_bias) {
        DS_CHECK(b->device().is_cpu() && b->scalar_type() == at::kFloat && b->is_contiguous() && b->dim() == 1 &&
                     b->size(0) == w.size(0),
                 "decode_linear: bias must be a contiguous float32 CPU vector of ", w.size(0), " elements, got ",
                 b->sizes());
    }
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    auto y = at::empty({M, N}, x.options());
    if (M == 0 || N == 0) return y;
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    const float* bp = has_bias ? b->data_ptr<float>() : nullptr;
    float* yp = y.data_ptr<float>();
    const int64_t tiles = N / kNB;
    // Each thread takes a contiguous range of w rows, so its reads stay one stream.
    at::parallel_for(0, tiles, 16, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
            const int64_t n = t * kNB;
            column_tile<kNB>(xp, M, K, wp + n * K, bp ? bp + n : nullptr, yp + n, N);
        }
    });
    for (int64_t n = tiles * kNB; n < N; ++n)  // rows of w left over by the tile width
        column_tile<1>(xp, M, K, wp + n * K, bp ? bp + n : nullptr, yp + n, N);
    return y;
}

int simd_width() { return Vec::kWidth; }
