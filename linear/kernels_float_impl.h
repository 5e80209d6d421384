// The float loops of linear/kernels.h, written once with GCC vector extensions and compiled for
// each instruction set inside its own namespace: kernels_{scalar,avx2,avx512}.cpp define
// ZIPML_VECTOR_BYTES (16, 32, 64) and include this file after their target pragma. The 32
// accumulation lanes of the definition are kFloatLanes / lanes-per-register native registers, so
// every variant adds the same products in the same order; element-wise vector arithmetic is IEEE
// single precision and the files are compiled without FMA contraction, so all variants agree bit
// for bit. Include only inside a namespace.

typedef float Vec __attribute__((vector_size(ZIPML_VECTOR_BYTES)));
constexpr int kVecLanes = ZIPML_VECTOR_BYTES / 4;
constexpr int kVecs = kFloatLanes / kVecLanes;

static inline Vec load_vec(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

static inline void store_vec(float* p, Vec v) { __builtin_memcpy(p, &v, sizeof v); }

typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));
typedef float Vec2 __attribute__((vector_size(8)));

// Lane l += lane l + width for width = lanes / 2, ..., 1 within one register.
template <class V>
static inline float reduce_register(V v) {
  if constexpr (sizeof(V) == 64) {
    return reduce_register<Vec8>(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  } else if constexpr (sizeof(V) == 32) {
    return reduce_register<Vec4>(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
  } else {
    const Vec2 c = __builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3);
    return c[0] + c[1];
  }
}

// The reduction tree of the definition, lane l += lane l + width for width 16, 8, 4, 2, 1: across
// registers while width >= lanes per register, then within one register.
static inline float reduce_lanes(Vec* acc) {
  for (int n = kVecs; n > 1; n /= 2)
    for (int v = 0; v < n / 2; ++v) acc[v] += acc[v + n / 2];
  return reduce_register<Vec>(acc[0]);
}

static float dot_impl(const float* a, const float* w, int64_t n) {
  Vec acc[kVecs];
#pragma GCC unroll 8
  for (int v = 0; v < kVecs; ++v) acc[v] = Vec{};
  int64_t i = 0;
  for (; i + kFloatLanes <= n; i += kFloatLanes) {
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) acc[v] += load_vec(a + i + v * kVecLanes) * load_vec(w + i + v * kVecLanes);
  }
  if (i < n) {  // the tail: lane l < n - i gains one more product
    float lanes[kFloatLanes];
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) store_vec(lanes + v * kVecLanes, acc[v]);
    for (int64_t l = 0; i + l < n; ++l) lanes[l] += a[i + l] * w[i + l];
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) acc[v] = load_vec(lanes + v * kVecLanes);
  }
  return reduce_lanes(acc);
}

static void gemv_t_impl(const float* const* rows, const float* e, int64_t nrows, int64_t n, float* g) {
  constexpr int kBlock = 2 * kFloatLanes;  // features per pass, kept in registers
  int64_t j = 0;
  for (; j + kBlock <= n; j += kBlock) {
    Vec acc[2 * kVecs];
#pragma GCC unroll 16
    for (int v = 0; v < 2 * kVecs; ++v) acc[v] = Vec{};
    for (int64_t k = 0; k < nrows; ++k) {
      const float ek = e[k];
      const float* row = rows[k] + j;
#pragma GCC unroll 16
      for (int v = 0; v < 2 * kVecs; ++v) acc[v] += ek * load_vec(row + v * kVecLanes);
    }
#pragma GCC unroll 16
    for (int v = 0; v < 2 * kVecs; ++v) store_vec(g + j + v * kVecLanes, acc[v]);
  }
  for (; j < n; ++j) {
    float acc = 0.0f;
    for (int64_t k = 0; k < nrows; ++k) acc += e[k] * rows[k][j];
    g[j] = acc;
  }
}

typedef int VecInt __attribute__((vector_size(ZIPML_VECTOR_BYTES)));

static float max_abs_impl(const float* v, int64_t begin, int64_t end) {
  Vec acc[kVecs];
#pragma GCC unroll 8
  for (int q = 0; q < kVecs; ++q) acc[q] = Vec{};
  const VecInt magnitude = VecInt{} + 0x7FFFFFFF;
  int64_t j = begin;
  for (; j + kFloatLanes <= end; j += kFloatLanes) {
#pragma GCC unroll 8
    for (int q = 0; q < kVecs; ++q) {
      const Vec a = reinterpret_cast<Vec>(reinterpret_cast<VecInt>(load_vec(v + j + q * kVecLanes)) & magnitude);
      acc[q] = acc[q] > a ? acc[q] : a;
    }
  }
  float best = 0.0f;
  for (int q = 0; q < kVecs; ++q)
    for (int l = 0; l < kVecLanes; ++l) best = best > acc[q][l] ? best : acc[q][l];
  for (; j < end; ++j) {
    const float a = v[j] < 0 ? -v[j] : v[j];
    best = best > a ? best : a;
  }
  return best;
}
