// Checks lowbit::Tokenizer against HF `tokenizers` output.
//
//   tokenizer_test TOKENIZER_JSON FIXTURE_JSONL   per fixture row {"text", "ids", "decoded"}:
//       Encode(text) == ids, Decode(ids) == decoded, and StreamDecoder deltas (each valid UTF-8)
//       concatenate to decoded (rows without "text" skip the encode check); then prints encode
//       throughput and
//       "tokenizer: N passed, M failed" (exit status 1 if any failed).
//   tokenizer_test --load TOKENIZER_JSON           loads the file; on error prints the message on
//       stderr and exits 2 (lets a caller check the refusal of unsupported components).
//   tokenizer_test --splits FIXTURE_JSONL          per row {"pattern", "text", "pieces"}: the
//       built-in matcher of the pre-tokenizer regex splits text into HF's pieces (Split, Isolated);
//       prints "splits: N passed, M failed".
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "split_pattern.h"
#include "tokenizer.h"

namespace {

struct Row {
  bool has_text;
  std::string text;
  std::vector<int32_t> ids;
  std::string decoded;
};

std::vector<Row> ReadFixture(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open fixture " + path);
  std::vector<Row> rows;
  std::string line;
  while (std::getline(file, line)) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line);
    rows.push_back({j.contains("text"), j.value("text", std::string()), j.at("ids").get<std::vector<int32_t>>(),
                    j.at("decoded").get<std::string>()});
  }
  return rows;
}

bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    const uint32_t min_for_length[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_length[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

std::string Ids(const std::vector<int32_t>& ids, size_t from) {
  std::string out = "[";
  for (size_t i = from; i < ids.size() && i < from + 12; ++i) out += (i > from ? " " : "") + std::to_string(ids[i]);
  return out + (ids.size() > from + 12 ? " ...]" : "]");
}

size_t FirstDifference(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

// Returns the failure messages of one row (empty when it passes).
std::vector<std::string> CheckRow(const lowbit::Tokenizer& tokenizer, const Row& row) {
  std::vector<std::string> failures;
  const std::vector<int32_t> ids = row.has_text ? tokenizer.Encode(row.text) : row.ids;
  if (ids != row.ids) {
    const size_t at = FirstDifference(ids, row.ids);
    failures.push_back("encode differs at token " + std::to_string(at) + ": got " + Ids(ids, at) + ", HF " +
                       Ids(row.ids, at));
  }
  const std::string decoded = tokenizer.Decode(row.ids);
  if (decoded != row.decoded) failures.push_back("decode differs: got " + nlohmann::json(decoded).dump());

  lowbit::StreamDecoder stream(tokenizer);
  std::string streamed;
  for (int32_t id : row.ids) {
    const std::string delta = stream.Push(id);
    if (!IsValidUtf8(delta)) failures.push_back("stream delta is not valid UTF-8 after id " + std::to_string(id));
    streamed += delta;
  }
  const std::string rest = stream.Flush();
  if (!IsValidUtf8(rest)) failures.push_back("stream flush is not valid UTF-8");
  streamed += rest;
  if (streamed != row.decoded) failures.push_back("streamed text differs: got " + nlohmann::json(streamed).dump());
  return failures;
}

// A tokenizer.json with an unsupported normalizer must be refused with a one-line message.
bool CheckRefusesNormalizer() {
  const char* json = R"({"normalizer": {"type": "Lowercase"}, "pre_tokenizer": null, "post_processor": null,
    "decoder": {"type": "ByteLevel"}, "added_tokens": [],
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})";
  try {
    lowbit::Tokenizer::FromJson(json);
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    const bool one_line = message.find('\n') == std::string::npos;
    if (one_line && message.find("normalizer Lowercase") != std::string::npos) return true;
    std::cout << "FAIL unsupported normalizer: unexpected message " << nlohmann::json(message).dump() << "\n";
    return false;
  }
  std::cout << "FAIL unsupported normalizer: loaded without error\n";
  return false;
}

int LoadOnly(const std::string& path) {
  try {
    const lowbit::Tokenizer tokenizer = lowbit::Tokenizer::FromFile(path);
    std::cout << "loaded " << path << ": " << tokenizer.VocabSize() << " ids\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
}

// `text` cut at the matches of `pattern` and between them, as HF's Split with Isolated cuts it.
std::vector<std::string> IsolatedPieces(const lowbit::SplitPattern& pattern, const std::string& text) {
  lowbit::Matches matches;
  pattern.FindAll(text, &matches);
  std::vector<std::string> pieces;
  size_t previous = 0;
  for (const auto& [begin, end] : matches) {
    if (previous != begin) pieces.push_back(text.substr(previous, begin - previous));
    pieces.push_back(text.substr(begin, end - begin));
    previous = end;
  }
  if (previous != text.size()) pieces.push_back(text.substr(previous));
  return pieces;
}

int CheckSplits(const std::string& fixture) {
  std::ifstream file(fixture);
  if (!file) throw std::runtime_error("cannot open fixture " + fixture);
  size_t passed = 0, failed = 0;
  std::string line;
  while (std::getline(file, line)) {
    if (line.empty()) continue;
    const nlohmann::json row = nlohmann::json::parse(line);
    const auto pattern = lowbit::BuiltInSplitPattern(row.at("pattern").get<std::string>());
    if (pattern == nullptr) throw std::runtime_error("no built-in matcher for " + row.at("pattern").dump());
    const std::string text = row.at("text").get<std::string>();
    if (IsolatedPieces(*pattern, text) == row.at("pieces").get<std::vector<std::string>>()) {
      ++passed;
    } else if (++failed <= 20) {
      std::cout << "FAIL " << row.at("pattern").dump() << " on " << nlohmann::json(text).dump() << "\n  got "
                << nlohmann::json(IsolatedPieces(*pattern, text)).dump() << "\n  HF  " << row.at("pieces").dump()
                << "\n";
    }
  }
  std::printf("splits: %zu passed, %zu failed\n", passed, failed);
  return failed == 0 && passed > 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--load") return LoadOnly(argv[2]);
  if (argc == 3 && std::string(argv[1]) == "--splits") return CheckSplits(argv[2]);
  if (argc != 2 && argc != 3) {
    std::cerr << "usage: tokenizer_test MANIFEST_JSON | tokenizer_test TOKENIZER_JSON FIXTURE_JSONL | "
                 "tokenizer_test --load TOKENIZER_JSON | tokenizer_test --splits FIXTURE_JSONL\n";
    return 2;
  }
  try {
    std::string tokenizer_json = argc == 3 ? argv[1] : "", fixture = argc == 3 ? argv[2] : "";
    if (argc == 2) {  // the CTest suite's manifest
      nlohmann::json manifest = nlohmann::json::parse(std::ifstream(argv[1]));
      tokenizer_json = manifest.at("tokenizer_json").get<std::string>();
      fixture = manifest.at("tokenizer_cases").get<std::string>();
    }
    const lowbit::Tokenizer tokenizer = lowbit::Tokenizer::FromFile(tokenizer_json);
    const std::vector<Row> rows = ReadFixture(fixture);

    size_t passed = 0, failed = 0;
    if (!CheckRefusesNormalizer()) ++failed;  // reported above; not a fixture row
    for (size_t i = 0; i < rows.size(); ++i) {
      const std::vector<std::string> failures = CheckRow(tokenizer, rows[i]);
      if (failures.empty()) {
        ++passed;
        continue;
      }
      if (++failed <= 20) {
        const Row& row = rows[i];
        std::cout << "FAIL row " << i << " "
                  << (row.has_text ? nlohmann::json(row.text.substr(0, 80)).dump() : Ids(row.ids, 0)) << "\n";
        for (const std::string& f : failures) std::cout << "  " << f << "\n";
      }
    }

    // Throughput: a fresh tokenizer (empty BPE cache) over every row, then again with the cache warm.
    const lowbit::Tokenizer fresh = lowbit::Tokenizer::FromFile(tokenizer_json);
    for (const char* pass : {"cold cache", "warm cache"}) {
      size_t tokens = 0;
      const auto start = std::chrono::steady_clock::now();
      for (const Row& row : rows) {
        if (row.has_text) tokens += fresh.Encode(row.text).size();
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("encode (%s): %zu tokens in %.3f s, %.0f tokens/s\n", pass, tokens, seconds,
                  seconds > 0 ? tokens / seconds : 0.0);
    }
    std::printf("tokenizer: %zu passed, %zu failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cout << "error: " << e.what() << "\n";
    std::printf("tokenizer: 0 passed, 1 failed\n");
    return 1;
  }
}
