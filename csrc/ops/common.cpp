#include "common.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DispatchKey.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

namespace zipml::detail {

int64_t parse_rounding(std::string_view rounding, const char* op) {
  if (rounding == "stochastic") return 0;
  if (rounding == "nearest") return 1;
  TORCH_CHECK_VALUE(false, op, ": rounding must be 'stochastic' or 'nearest', got '", rounding, "'");
}

Granularity parse_granularity(std::string_view granularity, const char* op) {
  if (granularity == "tensor") return Granularity::Tensor;
  if (granularity == "channel") return Granularity::Channel;
  if (granularity == "row") return Granularity::Row;
  TORCH_CHECK_VALUE(false, op, ": granularity must be 'tensor', 'channel' or 'row' (or a scale tensor), got '",
                    granularity, "'");
}

void check_float_input(const at::Tensor& x, const char* op, const char* name) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op, ": ", name,
                   " must be float32, float64, float16 or bfloat16, got ", t);
}

void check_bits(int64_t bits, const char* op) {
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 8, op, ": bits must be an integer from 1 to 8, got ", bits);
}

at::Tensor to_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

at::Tensor to_options(const at::Tensor& t, const at::TensorOptions& options) {
  return t.scalar_type() == options.dtype() && t.device() == options.device() ? t : t.to(options);
}

bool values_unavailable(const at::Tensor& t) {
  return t.is_meta() || t.key_set().has(c10::DispatchKey::Python) ||
         t.key_set().has(c10::DispatchKey::Functionalize);
}

std::vector<int64_t> scale_shape(const at::Tensor& x, Granularity granularity) {
  std::vector<int64_t> shape(x.dim(), 1);
  if (x.dim() == 0) return shape;
  if (granularity == Granularity::Channel) shape[0] = x.size(0);
  if (granularity == Granularity::Row)
    for (int64_t d = 0; d + 1 < x.dim(); ++d) shape[d] = x.size(d);
  return shape;
}

namespace {

int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// _absmax on the devices without a kernel of their own (meta, and any but CPU and CUDA, whose kernels
// read x once): max(|min x|, |max x|) in x's dtype, then rounded to float32 (max commutes with
// rounding). amin and amax are vectorized passes (linalg_vector_norm(inf) measured 3-10x slower on
// CPU), and aminmax takes a whole tensor's two extremes in one pass.
at::Tensor absmax_any_device(const at::Tensor& x, int64_t groups) {
  const c10::SymInt numel = x.sym_numel();  // symbolic under torch.compile's fake tensors
  TORCH_CHECK(groups >= 1 && numel % groups == 0, "_absmax: groups must be at least 1 and divide the ", numel,
              " elements of x, got ", groups);
  if (numel == 0) return at::zeros({groups}, x.options().dtype(at::kFloat));
  at::Tensor lo, hi;
  if (groups == 1) {
    std::tie(lo, hi) = at::aminmax(x);
  } else {
    const at::Tensor runs = x.reshape({groups, -1});
    lo = at::amin(runs, 1);
    hi = at::amax(runs, 1);
  }
  return to_float(at::maximum(lo.abs(), hi.abs())).reshape({groups});
}

}  // namespace

at::Tensor absmax_scale(const at::Tensor& x, Granularity granularity) {
  const std::vector<int64_t> shape = scale_shape(x, granularity);
  if (x.numel() == 0) return at::zeros(shape, x.options().dtype(at::kFloat));
  static const auto absmax = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("zipml::_absmax", "")
                                 .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return absmax.call(x.detach(), product(shape)).reshape(shape);
}

TORCH_LIBRARY_IMPL(zipml, CompositeExplicitAutograd, m) { m.impl("_absmax", &absmax_any_device); }

namespace {

const char* name_of(Granularity g) {
  return g == Granularity::Tensor ? "per-tensor" : g == Granularity::Channel ? "per-channel" : "per-row";
}

// A scale fits a granularity in its keepdim shape or flattened to 1-D.
bool scale_fits(const at::Tensor& x, const at::Tensor& scale, Granularity g) {
  const std::vector<int64_t> want = scale_shape(x, g);
  return scale.numel() == product(want) && (scale.sizes().vec() == want || scale.dim() <= 1);
}

}  // namespace

Granularity granularity_of_scale(const at::Tensor& x, const at::Tensor& scale, const char* op) {
  for (Granularity g : {Granularity::Tensor, Granularity::Channel, Granularity::Row})
    if (scale_fits(x, scale, g)) return g;
  TORCH_CHECK_VALUE(false, op, ": scale of shape ", scale.sizes(), " fits neither a per-tensor scale (1 element), ",
                    "a per-channel scale ", at::IntArrayRef(scale_shape(x, Granularity::Channel)),
                    " nor a per-row scale ", at::IntArrayRef(scale_shape(x, Granularity::Row)), " for x of shape ",
                    x.sizes());
}

at::Tensor inverse_scale(const at::Tensor& scale) {
  const at::Tensor inv = scale.reciprocal();
  return at::where((scale > 0) & (inv <= std::numeric_limits<float>::max()), inv, at::zeros_like(inv));
}

at::Tensor uniform_levels(int64_t count, const at::TensorOptions& options) {
  // (2i - (K-1)) * fl(1/(K-1)), each product rounded once, as kernel::Levels::at computes it.
  const float step = 1.0f / static_cast<float>(count - 1);
  at::Tensor table = at::empty({count}, at::kFloat);
  float* t = table.data_ptr<float>();
  for (int64_t i = 0; i < count; ++i) t[i] = static_cast<float>(2 * i - (count - 1)) * step;
  return to_options(table, options.dtype(at::kFloat));
}

at::Tensor Resolved::levels() const {
  return table ? *table : uniform_levels(num_levels, scale.options());
}

namespace {

at::Tensor checked_scale(const at::Tensor& x, const at::Tensor& scale, Granularity granularity, const char* op) {
  check_float_input(scale, op, "scale");
  TORCH_CHECK_VALUE(scale.device() == x.device(), op, ": scale is on ", scale.device(), " but x is on ", x.device());
  const std::vector<int64_t> want = scale_shape(x, granularity);
  TORCH_CHECK_VALUE(scale_fits(x, scale, granularity), op, ": a ", name_of(granularity), " scale for x of shape ",
                    x.sizes(), " has shape ", at::IntArrayRef(want), " (or ", product(want),
                    " elements in 1-D), got ", scale.sizes());
  return to_float(scale.detach()).contiguous().reshape(want);
}

at::Tensor checked_codebook(const at::Tensor& x, const at::Tensor& codebook, int64_t bits, const char* op) {
  check_float_input(codebook, op, "codebook");
  TORCH_CHECK_VALUE(codebook.device() == x.device(), op, ": codebook is on ", codebook.device(),
                    " but x is on ", x.device());
  TORCH_CHECK_VALUE(codebook.dim() == 1 && codebook.numel() >= 1 && codebook.numel() <= (int64_t{1} << bits), op,
                    ": codebook must be a 1-D tensor of 1 to 2^bits = ", int64_t{1} << bits,
                    " levels, got shape ", codebook.sizes());
  const at::Tensor table = to_float(codebook.detach()).contiguous();
  if (!values_unavailable(table)) {
    const at::Tensor cpu = table.cpu();
    const float* t = cpu.data_ptr<float>();
    for (int64_t i = 0; i < cpu.numel(); ++i) {
      TORCH_CHECK_VALUE(t[i] >= -1.0f && t[i] <= 1.0f, op, ": codebook levels must lie in [-1, 1] (units of ",
                        "the scale), level ", i, " is ", t[i]);
      TORCH_CHECK_VALUE(i == 0 || t[i] > t[i - 1], op, ": codebook levels must be strictly increasing, level ", i,
                        " (", t[i], ") follows ", t[i - 1]);
    }
  }
  return table;
}

}  // namespace

Resolved resolve(const at::Tensor& x, int64_t bits, std::string_view levels,
                 const std::optional<at::Tensor>& codebook, std::string_view granularity_name,
                 const std::optional<at::Tensor>& scale, int64_t candidates, const char* op) {
  check_float_input(x, op);
  check_bits(bits, op);
  // "auto": the shape of the given scale decides.
  TORCH_CHECK_VALUE(granularity_name != "auto" || scale.has_value(), op,
                    ": granularity='auto' needs a scale tensor");
  const Granularity granularity = granularity_name == "auto" ? granularity_of_scale(x, *scale, op)
                                                             : parse_granularity(granularity_name, op);
  Resolved r;
  r.scale = scale ? checked_scale(x, *scale, granularity, op) : absmax_scale(x, granularity);
  r.may_clip = scale.has_value();
  if (levels == "uniform" || levels == "optimal") {
    TORCH_CHECK_VALUE(!codebook, op, ": a codebook tensor was given with levels='", levels,
                      "'; pass levels='codebook' to use it");
    r.num_levels = int64_t{1} << bits;
    if (levels == "optimal") {
      static const auto handle = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("zipml::optimal_levels", "")
                                     .typed<at::Tensor(const at::Tensor&, int64_t, int64_t,
                                                       const std::optional<at::Tensor>&)>();
      r.table = handle.call(x.detach(), r.num_levels, candidates, r.scale);
    }
  } else if (levels == "codebook") {
    TORCH_CHECK_VALUE(codebook.has_value(), op, ": levels='codebook' needs the codebook tensor");
    r.table = checked_codebook(x, *codebook, bits, op);
    r.num_levels = r.table->numel();
    r.may_clip = true;
  } else {
    TORCH_CHECK_VALUE(false, op, ": levels must be 'uniform', 'optimal' or 'codebook' (a tensor), got '", levels,
                      "'");
  }
  return r;
}

void check_codes_scale_levels(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& levels,
                              const char* op, const char* codes_name) {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte, op, ": ", codes_name, " must be uint8, got ",
                   codes.scalar_type());
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat, op, ": scale must be float32, got ", scale.scalar_type());
  TORCH_CHECK_TYPE(levels.scalar_type() == at::kFloat, op, ": levels must be float32, got ", levels.scalar_type());
  TORCH_CHECK_VALUE(scale.device() == codes.device() && levels.device() == codes.device(), op, ": ", codes_name,
                    " (", codes.device(), "), scale (", scale.device(), ") and levels (", levels.device(),
                    ") must be on one device");
  TORCH_CHECK_VALUE(levels.dim() == 1 && levels.numel() >= 1 && levels.numel() <= 256, op,
                    ": levels must be a 1-D tensor of 1 to 256 values, got shape ", levels.sizes());
  TORCH_CHECK_VALUE(scale.numel() == 1 || scale.dim() == codes.dim(), op, ": scale must have one element or the ",
                    "keepdim shape quantize returns (", codes.dim(), " dims), got shape ", scale.sizes());
  granularity_of_scale(codes, scale, op);
}

}  // namespace zipml::detail
