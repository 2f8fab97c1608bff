// MD5 (RFC 1321), for the md5sum that TVM's tensor-cache writer records per shard.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lowbit {

class Md5 {
 public:
  Md5();
  void Update(const void* data, size_t n);
  /*! \brief The digest as 32 lowercase hex digits; the object is spent afterwards. */
  std::string HexDigest();

 private:
  void Block(const uint8_t* block);
  uint32_t state_[4];
  uint64_t length_ = 0;  // bytes hashed
  uint8_t buffer_[64];
  size_t buffered_ = 0;
};

/*! \brief The md5 of a whole file (hex); an Error if it cannot be read. */
std::string Md5File(const std::string& path);

}  // namespace lowbit
