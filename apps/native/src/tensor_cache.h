// The weights of an MLC folder: tensor-cache.json (the index) and its params_shard_*.bin files.
// The same contract as lowbit/artifact.py: every shard is checked for size and md5 before use.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

struct ParamRecord {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;     // "float32", "float16", "uint32", …
  std::string encoding;  // "raw" or "f32-to-bf16"
  std::string shard;     // file name in the folder
  int64_t offset = 0;
  int64_t nbytes = 0;
};

struct ShardRecord {
  std::string data_path;
  int64_t nbytes = 0;
  std::string md5;  // empty when the writer recorded none
};

struct TensorCacheIndex {
  std::string folder;
  std::vector<ShardRecord> shards;
  std::vector<ParamRecord> records;  // in file order

  /*! \brief The record named `name`, or nullptr. */
  const ParamRecord* Find(const std::string& name) const;
};

/*! \brief Parse `folder/tensor-cache.json` (no shard is read). */
TensorCacheIndex ReadTensorCacheIndex(const std::string& folder);

/*! \brief Every shard exists with its recorded size (and md5), else an Error naming it. */
void VerifyShards(const TensorCacheIndex& index, bool check_md5);

/*! \brief Read a record's bytes into `out` (`record.nbytes` of them; f32-to-bf16 records are
 *  decoded, so `out` then receives 2 × nbytes). */
void ReadRecord(const TensorCacheIndex& index, const ParamRecord& record, void* out);

/*! \brief Bytes the decoded record occupies in memory. */
int64_t DecodedBytes(const ParamRecord& record);

}  // namespace lowbit
