// The zipml operator library: every schema in one place, the single source of truth for Python,
// C++ and torch.compile. Public operators are implemented device-independently in csrc/ops
// (CompositeExplicitAutograd, with autograd registered in C++); the underscored ones are the device
// kernels in kernels/cpu and kernels/cuda.
#include <torch/library.h>

TORCH_LIBRARY(zipml, m) {
  // Quantization of a tensor to b-bit codes (ZipML, arXiv 1611.05402, Sections 2 and 5).
  // levels: "uniform" (2^bits points, endpoints -1 and 1), "optimal" (variance-optimal for x) or
  // "codebook" (the sorted tensor `codebook`); granularity: "tensor", "channel" (dim 0) or "row"
  // (all dims but the last); a given scale overrides the computed max-abs scale.
  m.def(
      "quantize(Tensor x, int bits, *, str rounding=\"stochastic\", str levels=\"uniform\", "
      "Tensor? codebook=None, str granularity=\"tensor\", Tensor? scale=None, int seed=0, int offset=0, "
      "int candidates=1024) -> (Tensor codes, Tensor scale, Tensor levels)");
  m.def("dequantize(Tensor codes, Tensor scale, Tensor levels, *, ScalarType dtype=float) -> Tensor");
  // quantize + dequantize in one pass; backward is the straight-through estimator. The out variant
  // returns nothing (custom operators cannot return aliases and stay functionalizable).
  m.def(
      "fake_quantize(Tensor x, int bits, *, str rounding=\"stochastic\", str levels=\"uniform\", "
      "Tensor? codebook=None, str granularity=\"tensor\", Tensor? scale=None, int seed=0, int offset=0, "
      "int candidates=1024) -> Tensor");
  m.def(
      "fake_quantize.out(Tensor x, int bits, *, str rounding=\"stochastic\", str levels=\"uniform\", "
      "Tensor? codebook=None, str granularity=\"tensor\", Tensor? scale=None, int seed=0, int offset=0, "
      "int candidates=1024, Tensor(a!) out) -> ()");
  // Identity forward; backward quantizes the incoming gradient stochastically (unbiased).
  m.def("quantize_grad(Tensor x, int bits, *, str granularity=\"tensor\", int seed=0, int offset=0) -> Tensor");
  // Two independent stochastic samples stored as one interval index plus two round-up bits
  // (Section 4: double sampling). Consumes Philox streams offset and offset + 1.
  m.def(
      "double_sample(Tensor x, int bits, *, str levels=\"uniform\", Tensor? codebook=None, "
      "str granularity=\"tensor\", Tensor? scale=None, int seed=0, int offset=0, int candidates=1024) "
      "-> (Tensor index, Tensor up, Tensor scale, Tensor levels)");
  m.def(
      "double_sample_decode(Tensor index, Tensor up, Tensor scale, Tensor levels, *, ScalarType dtype=float) "
      "-> (Tensor first, Tensor second)");
  // Variance-optimal levels in units of the scale (Section 5), exactly num_levels of them.
  m.def("optimal_levels(Tensor x, int num_levels, *, int candidates=1024, Tensor? scale=None) -> Tensor");
  m.def("pack(Tensor codes, int bits) -> Tensor");
  m.def("unpack(Tensor packed, int bits, int numel) -> Tensor");

  // Device kernels. Arguments are validated by the public operators above.
  m.def(
      "_fake_quantize_into(Tensor x, Tensor scale, Tensor? table, int num_levels, int rounding, int seed, "
      "int offset, Tensor(a!) out) -> ()");
  m.def(
      "_quantize_codes(Tensor x, Tensor scale, Tensor? table, int num_levels, int rounding, int seed, "
      "int offset) -> Tensor");
  m.def(
      "_double_sample_codes(Tensor x, Tensor scale, Tensor? table, int num_levels, int seed, int offset) "
      "-> (Tensor, Tensor)");
  m.def(
      "_dequantize_codes(Tensor codes, Tensor? up, int up_bit, Tensor scale, Tensor table, ScalarType dtype) "
      "-> Tensor");
  // 1 where fake_quantize with these options passes the gradient (x within the levels' range), 0 where
  // it clips; device-independent, used by the straight-through backward.
  m.def(
      "_ste_mask(Tensor x, str levels, Tensor? codebook, str granularity, Tensor? scale) -> Tensor");
  m.def("_level_histogram(Tensor x, Tensor scale, int bins) -> (Tensor, Tensor)");
  // max |x| (float32, NaN where a NaN occurs) of each of `groups` runs of consecutive elements.
  m.def("_absmax(Tensor x, int groups) -> Tensor");
  m.def("_pack(Tensor codes, int bits) -> Tensor");
  m.def("_unpack(Tensor packed, int bits, int numel) -> Tensor");
}
