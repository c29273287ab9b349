// crc32c.h — CRC-32C (Castagnoli), the checksum TFRecord framing uses.
//
// Written here rather than taken from a Debian package: the only packaged implementations
// (libcrc32c, abseil, leveldb/snappy internals) would add a runtime dependency for ~20 lines
// of table code, and TensorBoard files are small enough that a table-driven byte loop is fast.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sumi::logging {

// Plain CRC-32C of `size` bytes (reflected polynomial 0x82F63B78, init and final xor ~0).
// crc32c("123456789") == 0xE3069283.
std::uint32_t crc32c(const void* data, std::size_t size);

// The "masked" CRC stored in TFRecord files: rotating and offsetting keeps a CRC of data
// that itself contains CRCs from being trivially zero.
inline std::uint32_t mask_crc(std::uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

}  // namespace sumi::logging
