// SIMD vocabulary shared by the CPU optimizers (cpu_adam, cpu_adagrad, cpu_lion).
//
// The optimizer maths is written once, as a template over a "vector of floats"
// type V. This header provides three such types and picks one at compile time:
//
//   __AVX512__  -> Vec512  (16 floats, needs -mavx512f -mavx512bw -mf16c)
//   __AVX256__  -> Vec256  (8 floats, needs -mavx2, F16C used when -mf16c)
//   otherwise   -> VecScalar (1 float; also the tail type of the SIMD builds)
//
// Every type loads fp32 / fp16 / bf16 storage into fp32 lanes and stores fp32
// lanes back with round-to-nearest-even, bit for bit what torch's `.half()` and
// `.bfloat16()` produce (NaN payloads aside), so a SIMD build, the scalar build
// and the pure-torch reference agree on every 16-bit output they round.
//
// This header deliberately does not include torch: it is plain C++17 so it can
// be read (and tested) on its own. The torch-facing dispatch lives in
// cpu_optimizer_dispatch.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512__) || defined(__AVX256__)
#include <immintrin.h>
#endif

#if defined(__AVX512__) && !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__F16C__))
#error "__AVX512__ builds need -mavx512f -mavx512bw -mf16c (see op_builder/simd.py)"
#endif
#if defined(__AVX256__) && !defined(__AVX2__)
#error "__AVX256__ builds need -mavx2 (see op_builder/simd.py)"
#endif

namespace ds_cpu {

// 16-bit storage types. They carry only the bits: all arithmetic happens in
// fp32 after a load, so no operators are defined on them.
struct half_bits {
    uint16_t x;
};
struct bf16_bits {
    uint16_t x;
};
// Marker for "no second output": the copy pointer of a plain (non _copy) update.
struct no_copy {};

inline uint32_t float_bits(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    return u;
}

inline float bits_float(uint32_t u)
{
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
}

// fp32 -> bf16, round to nearest, ties to even. Adding 0x7FFF plus the lowest
// kept bit to the dropped half rounds up exactly when the dropped half is
// above 0x8000, or equal to it with an odd kept part. A carry out of the
// mantissa bumps the exponent, which is the correct rounding (to inf at the
// top). NaN becomes the canonical quiet NaN 0x7FC0, as torch does.
inline uint16_t bf16_from_float(float f)
{
    if (std::isnan(f)) return 0x7FC0;
    const uint32_t u = float_bits(f);
    return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline float float_from_bf16(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// fp32 -> IEEE fp16, round to nearest, ties to even, with fp16 subnormals,
// overflow to inf and NaN -> sign | 0x7E00 (torch's behaviour).
inline uint16_t half_from_float(float f)
{
    const uint32_t u = float_bits(f);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u;  // NaN
    // 0x477FF000 is halfway between 65504 (largest half, odd mantissa) and
    // 65536: ties go to the even neighbour, which is inf.
    if (a >= 0x477FF000u) return sign | 0x7C00u;
    if (a < 0x38800000u) {  // below 2^-14: an fp16 subnormal (or zero)
        if (a <= 0x33000000u) return sign;  // at most 2^-25: rounds to (signed) zero
        const uint32_t exp = a >> 23;       // 102..112
        const uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
        const uint32_t shift = 126u - exp;  // value in units of 2^-24 is mant >> shift
        uint32_t r = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u);
        const uint32_t halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u))) ++r;  // may carry into the smallest normal: fine
        return sign | static_cast<uint16_t>(r);
    }
    // Normal: rebias the exponent (127 -> 15) and drop 13 mantissa bits.
    uint32_t r = (a - 0x38000000u) >> 13;
    const uint32_t rem = a & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
}

inline float float_from_half(uint16_t h)
{
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    const uint32_t mant = h & 0x3FFu;
    if (exp == 0x1Fu) return bits_float(sign | 0x7F800000u | (mant << 13));
    if (exp == 0) {
        // Subnormal (or zero): mant * 2^-24 is exact in fp32.
        return bits_float(float_bits(static_cast<float>(mant) * 5.9604644775390625e-8f) | sign);
    }
    return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// ---------------------------------------------------------------------------
// VecScalar: one float. The scalar build runs on it; the SIMD builds use it
// for the tail that does not fill a whole vector.
struct VecScalar {
    static constexpr int kWidth = 1;
    float v;

    static inline VecScalar set1(float x) { return {x}; }
    static inline VecScalar load(const float* p) { return {*p}; }
    static inline VecScalar load(const half_bits* p) { return {float_from_half(p->x)}; }
    static inline VecScalar load(const bf16_bits* p) { return {float_from_bf16(p->x)}; }
    static inline void store(float* p, VecScalar a) { *p = a.v; }
    static inline void store(half_bits* p, VecScalar a) { p->x = half_from_float(a.v); }
    static inline void store(bf16_bits* p, VecScalar a) { p->x = bf16_from_float(a.v); }

    friend inline VecScalar operator+(VecScalar a, VecScalar b) { return {a.v + b.v}; }
    friend inline VecScalar operator-(VecScalar a, VecScalar b) { return {a.v - b.v}; }
    friend inline VecScalar operator*(VecScalar a, VecScalar b) { return {a.v * b.v}; }
    friend inline VecScalar operator/(VecScalar a, VecScalar b) { return {a.v / b.v}; }
    friend inline VecScalar sqrt(VecScalar a) { return {std::sqrt(a.v)}; }
    friend inline VecScalar fma(VecScalar a, VecScalar b, VecScalar c) { return {std::fma(a.v, b.v, c.v)}; }
    friend inline float reduce_add(VecScalar a) { return a.v; }
    // +1, -1 or 0 (Lion's update direction).
    friend inline VecScalar sign(VecScalar a)
    {
        return {static_cast<float>(a.v > 0.0f) - static_cast<float>(a.v < 0.0f)};
    }
};

#if defined(__AVX512__)
// ---------------------------------------------------------------------------
// Vec512: 16 floats in a zmm register.
struct Vec512 {
    static constexpr int kWidth = 16;
    __m512 v;

    static inline Vec512 set1(float x) { return {_mm512_set1_ps(x)}; }
    static inline Vec512 load(const float* p) { return {_mm512_loadu_ps(p)}; }
    static inline Vec512 load(const half_bits* p)
    {
        return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
    }
    static inline Vec512 load(const bf16_bits* p)
    {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        return {_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))};
    }
    static inline void store(float* p, Vec512 a) { _mm512_storeu_ps(p, a.v); }
    static inline void store(half_bits* p, Vec512 a)
    {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                            _mm512_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    // Same integer rounding as bf16_from_float, 16 lanes at a time. (The
    // AVX512-BF16 vcvtneps2bf16 instruction is not used: it flushes fp32
    // subnormals to zero, so it would not match torch bit for bit.)
    static inline void store(bf16_bits* p, Vec512 a)
    {
        const __m512i u = _mm512_castps_si512(a.v);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
        const __mmask16 nan = _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q);
        r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
    }

    friend inline Vec512 operator+(Vec512 a, Vec512 b) { return {_mm512_add_ps(a.v, b.v)}; }
    friend inline Vec512 operator-(Vec512 a, Vec512 b) { return {_mm512_sub_ps(a.v, b.v)}; }
    friend inline Vec512 operator*(Vec512 a, Vec512 b) { return {_mm512_mul_ps(a.v, b.v)}; }
    friend inline Vec512 operator/(Vec512 a, Vec512 b) { return {_mm512_div_ps(a.v, b.v)}; }
    friend inline Vec512 sqrt(Vec512 a) { return {_mm512_sqrt_ps(a.v)}; }
    // a * b + c in one rounding, and the sum of the lanes (the decode linear's dot products).
    friend inline Vec512 fma(Vec512 a, Vec512 b, Vec512 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
    friend inline float reduce_add(Vec512 a) { return _mm512_reduce_add_ps(a.v); }
    friend inline Vec512 sign(Vec512 a)
    {
        const __m512 zero = _mm512_setzero_ps();
        const __mmask16 pos = _mm512_cmp_ps_mask(a.v, zero, _CMP_GT_OQ);
        const __mmask16 neg = _mm512_cmp_ps_mask(a.v, zero, _CMP_LT_OQ);
        const __m512 r = _mm512_mask_mov_ps(zero, pos, _mm512_set1_ps(1.0f));
        return {_mm512_mask_mov_ps(r, neg, _mm512_set1_ps(-1.0f))};
    }
};
using Vec = Vec512;

#elif defined(__AVX256__)
// ---------------------------------------------------------------------------
// Vec256: 8 floats in a ymm register.
struct Vec256 {
    static constexpr int kWidth = 8;
    __m256 v;

    static inline Vec256 set1(float x) { return {_mm256_set1_ps(x)}; }
    static inline Vec256 load(const float* p) { return {_mm256_loadu_ps(p)}; }
    static inline Vec256 load(const half_bits* p)
    {
#if defined(__F16C__)
        return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
#else
        alignas(32) float lanes[8];
        for (int i = 0; i < 8; ++i) lanes[i] = float_from_half(p[i].x);
        return {_mm256_load_ps(lanes)};
#endif
    }
    static inline Vec256 load(const bf16_bits* p)
    {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return {_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))};
    }
    static inline void store(float* p, Vec256 a) { _mm256_storeu_ps(p, a.v); }
    static inline void store(half_bits* p, Vec256 a)
    {
#if defined(__F16C__)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT));
#else
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, a.v);
        for (int i = 0; i < 8; ++i) p[i].x = half_from_float(lanes[i]);
#endif
    }
    static inline void store(bf16_bits* p, Vec256 a)
    {
        const __m256i u = _mm256_castps_si256(a.v);
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
        const __m256 nan = _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q);
        r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
        // Every lane now holds a value <= 0xFFFF, so the unsigned-saturating
        // pack is a plain narrowing; packing the two halves keeps lane order.
        const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
    }

    friend inline Vec256 operator+(Vec256 a, Vec256 b) { return {_mm256_add_ps(a.v, b.v)}; }
    friend inline Vec256 operator-(Vec256 a, Vec256 b) { return {_mm256_sub_ps(a.v, b.v)}; }
    friend inline Vec256 operator*(Vec256 a, Vec256 b) { return {_mm256_mul_ps(a.v, b.v)}; }
    friend inline Vec256 operator/(Vec256 a, Vec256 b) { return {_mm256_div_ps(a.v, b.v)}; }
    friend inline Vec256 sqrt(Vec256 a) { return {_mm256_sqrt_ps(a.v)}; }
    friend inline Vec256 fma(Vec256 a, Vec256 b, Vec256 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
    friend inline float reduce_add(Vec256 a)
    {
        const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
        const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
        return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
    }
    friend inline Vec256 sign(Vec256 a)
    {
        const __m256 zero = _mm256_setzero_ps();
        const __m256 one = _mm256_set1_ps(1.0f);
        const __m256 pos = _mm256_and_ps(_mm256_cmp_ps(a.v, zero, _CMP_GT_OQ), one);
        const __m256 neg = _mm256_and_ps(_mm256_cmp_ps(a.v, zero, _CMP_LT_OQ), one);
        return {_mm256_sub_ps(pos, neg)};
    }
};
using Vec = Vec256;

#else
using Vec = VecScalar;
#endif

}  // namespace ds_cpu
