// pack / unpack: b-bit codes (1 <= b <= 8) to and from a dense byte stream (layout in
// kernels/common/pack.h), the storage format of quantized tensors.
#include <torch/library.h>

#include "../../kernels/common/pack.h"
#include "common.h"

namespace zipml::detail {
namespace {

at::Tensor pack(const at::Tensor& codes, int64_t bits) {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte, "pack: codes must be uint8, got ", codes.scalar_type());
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 8, "pack: bits must be an integer from 1 to 8, got ", bits);
  static const auto kernel = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("zipml::_pack", "")
                                 .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return kernel.call(codes, bits);
}

at::Tensor unpack(const at::Tensor& packed, int64_t bits, int64_t numel) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "unpack: packed must be uint8, got ", packed.scalar_type());
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 8, "unpack: bits must be an integer from 1 to 8, got ", bits);
  TORCH_CHECK_VALUE(numel >= 0, "unpack: numel must be >= 0, got ", numel);
  TORCH_CHECK_VALUE(packed.dim() == 1, "unpack: packed must be 1-D, got shape ", packed.sizes());
  const int64_t need = kernel::packed_bytes(numel, static_cast<int>(bits));
  TORCH_CHECK_VALUE(packed.numel() >= need, "unpack: ", numel, " codes of ", bits, " bits need ", need,
                    " bytes, packed has ", packed.numel());
  static const auto kernel = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("zipml::_unpack", "")
                                 .typed<at::Tensor(const at::Tensor&, int64_t, int64_t)>();
  return kernel.call(packed, bits, numel);
}

}  // namespace

TORCH_LIBRARY_IMPL(zipml, CompositeExplicitAutograd, m) {
  m.impl("pack", &pack);
  m.impl("unpack", &unpack);
}

}  // namespace zipml::detail
