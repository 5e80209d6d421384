// The float loops of linear/kernels.h, written once with GCC vector extensions and compiled for
// each instruction set inside its own namespace (kernels_{scalar,avx2,avx512}.cpp include this
// file after their target pragma). Element-wise vector arithmetic is IEEE single precision in
// every variant and the files are compiled without FMA contraction, so all variants agree bit for
// bit. Include only inside a namespace.

typedef float FloatLanes __attribute__((vector_size(4 * kFloatLanes)));

static inline FloatLanes load_lanes(const float* p) {
  FloatLanes v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

static inline void store_lanes(float* p, FloatLanes v) { __builtin_memcpy(p, &v, sizeof v); }

static float dot_impl(const float* a, const float* w, int64_t n) {
  FloatLanes acc = {};
  int64_t i = 0;
  for (; i + kFloatLanes <= n; i += kFloatLanes) acc += load_lanes(a + i) * load_lanes(w + i);
  float lanes[kFloatLanes];
  store_lanes(lanes, acc);
  for (int64_t l = 0; i + l < n; ++l) lanes[l] += a[i + l] * w[i + l];
  for (int width = kFloatLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

static void gemv_t_impl(const float* const* rows, const float* e, int64_t nrows, int64_t n, float* g) {
  int64_t j = 0;
  for (; j + 2 * kFloatLanes <= n; j += 2 * kFloatLanes) {
    FloatLanes lo = {}, hi = {};
    for (int64_t k = 0; k < nrows; ++k) {
      lo += e[k] * load_lanes(rows[k] + j);
      hi += e[k] * load_lanes(rows[k] + j + kFloatLanes);
    }
    store_lanes(g + j, lo);
    store_lanes(g + j + kFloatLanes, hi);
  }
  for (; j < n; ++j) {
    float acc = 0.0f;
    for (int64_t k = 0; k < nrows; ++k) acc += e[k] * rows[k][j];
    g[j] = acc;
  }
}
