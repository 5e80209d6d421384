// AVX-512 span kernels: being written; until then the scalar reference runs.
#include "span.h"

namespace zipml::cpu {
const SpanKernels* avx512_span_kernels() { return nullptr; }
const SpanKernels* avx2_span_kernels() { return nullptr; }
}  // namespace zipml::cpu
