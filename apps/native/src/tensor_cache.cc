#include "tensor_cache.h"

#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <vector>

#include "error.h"
#include "json_util.h"
#include "md5.h"

namespace lowbit {

const char kTensorCache[] = "tensor-cache.json";

const ParamRecord* TensorCacheIndex::Find(const std::string& name) const {
  for (const auto& r : records)
    if (r.name == name) return &r;
  return nullptr;
}

TensorCacheIndex ReadTensorCacheIndex(const std::string& folder) {
  std::string path = JoinPath(folder, kTensorCache);
  if (!IsFile(path)) throw Error(folder + " is not an MLC weight folder (no " + kTensorCache + ")");
  Json info = ReadJsonFile(path, "tensor cache index");
  TensorCacheIndex index;
  index.folder = folder;
  try {
    for (const auto& shard : info.at("records")) {
      ShardRecord s;
      s.data_path = shard.at("dataPath").get<std::string>();
      s.nbytes = shard.at("nbytes").get<int64_t>();
      if (shard.contains("md5sum")) s.md5 = shard.at("md5sum").get<std::string>();
      if (s.data_path.find('/') != std::string::npos || s.data_path.rfind("..", 0) == 0)
        throw Error(path + " names shard " + s.data_path + " outside the folder");
      for (const auto& r : shard.at("records")) {
        ParamRecord p;
        p.name = r.at("name").get<std::string>();
        p.shape = r.at("shape").get<std::vector<int64_t>>();
        p.dtype = r.at("dtype").get<std::string>();
        p.encoding = r.value("format", std::string("raw"));
        p.shard = s.data_path;
        p.offset = r.at("byteOffset").get<int64_t>();
        p.nbytes = r.at("nbytes").get<int64_t>();
        if (p.offset < 0 || p.nbytes < 0 || p.offset + p.nbytes > s.nbytes)
          throw Error(path + ": record " + p.name + " lies outside its shard " + s.data_path);
        index.records.push_back(std::move(p));
      }
      index.shards.push_back(std::move(s));
    }
  } catch (const Json::exception& e) {
    throw Error(path + " is not a valid tensor cache index (" + FirstLine(e.what()) + ")");
  }
  return index;
}

void VerifyShards(const TensorCacheIndex& index, bool check_md5) {
  for (const auto& shard : index.shards) {
    std::string path = JoinPath(index.folder, shard.data_path);
    struct stat st {};
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) throw Error("missing weight shard " + path);
    if (st.st_size != shard.nbytes)
      throw Error("weight shard " + path + " has " + std::to_string(st.st_size) + " bytes, expected " +
                  std::to_string(shard.nbytes) + " (truncated?)");
    if (check_md5 && !shard.md5.empty() && Md5File(path) != shard.md5)
      throw Error("weight shard " + path + " fails its md5 check (corrupted)");
  }
}

static bool IsBf16Encoded(const ParamRecord& r) { return r.encoding == "f32-to-bf16" && r.dtype == "float32"; }

int64_t DecodedBytes(const ParamRecord& r) { return IsBf16Encoded(r) ? 2 * r.nbytes : r.nbytes; }

void ReadRecord(const TensorCacheIndex& index, const ParamRecord& r, void* out) {
  std::string path = JoinPath(index.folder, r.shard);
  std::ifstream in(path, std::ios::binary);
  in.seekg(r.offset);
  if (!IsBf16Encoded(r)) {
    if (!in.read(static_cast<char*>(out), r.nbytes)) throw Error("cannot read " + r.name + " from " + path);
    return;
  }
  std::vector<uint16_t> raw(static_cast<size_t>(r.nbytes / 2));
  if (!in.read(reinterpret_cast<char*>(raw.data()), r.nbytes)) throw Error("cannot read " + r.name + " from " + path);
  auto* dst = static_cast<uint32_t*>(out);
  for (size_t i = 0; i < raw.size(); ++i) dst[i] = uint32_t(raw[i]) << 16;  // bf16 → the fp32 it rounds
}

}  // namespace lowbit
