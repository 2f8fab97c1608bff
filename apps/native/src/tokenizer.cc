#include "tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "split_pattern.h"
#include "unicode_classes.h"
#include "utf8.h"

namespace lowbit {
namespace {

using json = nlohmann::json;

constexpr std::string_view kErrorPrefix = "tokenizer.json: ";

[[noreturn]] void Fail(const std::string& message) { throw std::runtime_error(std::string(kErrorPrefix) + message); }

// ---------------------------------------------------------------------------------------------
// UTF-8

enum class Utf8Step { kChar, kInvalid, kTruncated };

// Classifies the bytes at s[i]: a well-formed character, an ill-formed subsequence, or a valid
// prefix cut off by the end of the input. `*len` is the character's length, or the length of the
// maximal subpart of a well-formed sequence (Unicode's "maximal subpart" rule, which Rust's
// String::from_utf8_lossy and Python's "replace" error handler both follow).
Utf8Step NextUtf8(std::string_view s, size_t i, size_t* len) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) {
    *len = 1;
    return Utf8Step::kChar;
  }
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 3;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 4;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    *len = 1;
    return Utf8Step::kInvalid;
  }
  for (size_t k = 1; k < need; ++k) {
    if (i + k >= s.size()) {
      *len = k;
      return Utf8Step::kTruncated;
    }
    const unsigned char b = byte(i + k);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *len = k;
      return Utf8Step::kInvalid;
    }
  }
  *len = need;
  return Utf8Step::kChar;
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0, len = 0; i < s.size(); i += len) {
    if (NextUtf8(s, i, &len) != Utf8Step::kChar) return false;
  }
  return true;
}

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// `bytes` as UTF-8 with each ill-formed subsequence replaced by U+FFFD.
std::string LossyUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0, len = 0; i < bytes.size(); i += len) {
    if (NextUtf8(bytes, i, &len) == Utf8Step::kChar) {
      out.append(bytes.substr(i, len));
    } else {
      out.append(kReplacementChar);
    }
  }
  return out;
}

// Length of the prefix of `bytes` that ends before a trailing incomplete (but so far valid)
// UTF-8 sequence; bytes.size() if there is none.
size_t CompletePrefixLength(std::string_view bytes) {
  for (size_t i = 0, len = 0; i < bytes.size(); i += len) {
    if (NextUtf8(bytes, i, &len) == Utf8Step::kTruncated) return i;
  }
  return bytes.size();
}

// Code point of the well-formed character at s[i]; *len receives its length.
uint32_t DecodeCodePoint(std::string_view s, size_t i, size_t* len) {
  NextUtf8(s, i, len);
  return CodePointAt(s, i, *len);
}

// GPT-2's reversible byte → printable character table used by ByteLevel: printable Latin-1
// bytes map to themselves, the other 68 bytes to U+0100.. in byte order.
struct ByteLevelTable {
  std::array<std::string, 256> byte_to_utf8;  // each byte's character, UTF-8 encoded
  std::array<int, 324> char_to_byte;          // code point (all below U+0144) → byte, or -1

  ByteLevelTable() {
    char_to_byte.fill(-1);
    uint32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next_extra++;
      AppendUtf8(cp, &byte_to_utf8[b]);
      char_to_byte[cp] = b;
    }
  }
};

const ByteLevelTable& ByteLevel() {
  static const ByteLevelTable table;
  return table;
}

// ---------------------------------------------------------------------------------------------
// NFC normalization (the "NFC" normalizer), from tables generated out of HF's own NFC

struct NfcDecomposition {
  uint32_t code_point;
  uint16_t offset;  // into kNfcDecompositionData
  uint8_t length;
};
struct NfcCombiningClass {
  uint32_t code_point;
  uint8_t combining_class;
};
struct NfcComposition {
  uint32_t first, second, composite;
};

#include "unicode_nfc_table.inc"

// Hangul syllables decompose and compose arithmetically (Unicode §3.12).
constexpr uint32_t kHangulS = 0xAC00, kHangulL = 0x1100, kHangulV = 0x1161, kHangulT = 0x11A7;
constexpr uint32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr uint32_t kHangulSCount = kHangulLCount * kHangulVCount * kHangulTCount;

void AppendDecomposition(uint32_t cp, std::vector<uint32_t>* out) {
  if (cp >= kHangulS && cp < kHangulS + kHangulSCount) {
    const uint32_t index = cp - kHangulS;
    out->push_back(kHangulL + index / (kHangulVCount * kHangulTCount));
    out->push_back(kHangulV + (index % (kHangulVCount * kHangulTCount)) / kHangulTCount);
    if (index % kHangulTCount != 0) out->push_back(kHangulT + index % kHangulTCount);
    return;
  }
  const auto it = std::lower_bound(std::begin(kNfcDecompositions), std::end(kNfcDecompositions), cp,
                                   [](const NfcDecomposition& d, uint32_t c) { return d.code_point < c; });
  if (it != std::end(kNfcDecompositions) && it->code_point == cp) {
    out->insert(out->end(), kNfcDecompositionData + it->offset, kNfcDecompositionData + it->offset + it->length);
  } else {
    out->push_back(cp);
  }
}

int CombiningClass(uint32_t cp) {
  const auto it = std::lower_bound(std::begin(kNfcCombiningClasses), std::end(kNfcCombiningClasses), cp,
                                   [](const NfcCombiningClass& c, uint32_t v) { return c.code_point < v; });
  return it != std::end(kNfcCombiningClasses) && it->code_point == cp ? it->combining_class : 0;
}

// The primary composite of `first` + `second`, or 0 if they do not compose.
uint32_t Compose(uint32_t first, uint32_t second) {
  const bool leading = first >= kHangulL && first < kHangulL + kHangulLCount;
  if (leading && second >= kHangulV && second < kHangulV + kHangulVCount) {
    return kHangulS + ((first - kHangulL) * kHangulVCount + (second - kHangulV)) * kHangulTCount;
  }
  if (first >= kHangulS && first < kHangulS + kHangulSCount && (first - kHangulS) % kHangulTCount == 0 &&
      second > kHangulT && second < kHangulT + kHangulTCount) {
    return first + (second - kHangulT);
  }
  const auto key = std::make_pair(first, second);
  const auto it = std::lower_bound(std::begin(kNfcCompositions), std::end(kNfcCompositions), key,
                                   [](const NfcComposition& c, const std::pair<uint32_t, uint32_t>& k) {
                                     return std::make_pair(c.first, c.second) < k;
                                   });
  return it != std::end(kNfcCompositions) && it->first == first && it->second == second ? it->composite : 0;
}

// Unicode Normalization Form C of valid UTF-8 `text`.
std::string Nfc(const std::string& text) {
  bool quick = true;
  for (size_t i = 0, len = 0; quick && i < text.size(); i += len) {
    quick = DecodeCodePoint(text, i, &len) < kNfcQuickLimit;
  }
  if (quick) return text;
  std::vector<uint32_t> cps;
  for (size_t i = 0, len = 0; i < text.size(); i += len) AppendDecomposition(DecodeCodePoint(text, i, &len), &cps);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 1; i < cps.size(); ++i) {
    const int ccc = CombiningClass(cps[i]);
    if (ccc == 0) continue;
    for (size_t j = i; j > 0 && CombiningClass(cps[j - 1]) > ccc; --j) std::swap(cps[j - 1], cps[j]);
  }
  // Canonical composition: a character joins the last starter if it directly follows it, or if
  // every character in between has a lower combining class (is not "blocking").
  size_t starter = 0, written = 0;
  bool have_starter = false;
  int last_class = 0;  // class of the last character written
  for (size_t i = 0; i < cps.size(); ++i) {
    const uint32_t cp = cps[i];
    const int ccc = CombiningClass(cp);
    const bool unblocked = have_starter && (written - 1 == starter || (last_class != 0 && last_class < ccc));
    if (unblocked) {
      if (const uint32_t composite = Compose(cps[starter], cp)) {
        cps[starter] = composite;
        continue;
      }
    }
    if (ccc == 0) {
      starter = written;
      have_starter = true;
    }
    last_class = ccc;
    cps[written++] = cp;
  }
  cps.resize(written);
  std::string out;
  out.reserve(text.size());
  for (uint32_t cp : cps) AppendUtf8(cp, &out);
  return out;
}

// Start of the last character of non-empty valid UTF-8 `s`.
size_t LastCharStart(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers

// One piece of a pre-tokenizer's split: text offsets and whether the pattern matched it.
struct Span {
  size_t begin, end;
  bool is_match;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior ParseBehavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  Fail("Split behavior " + json(name).dump() + " is not supported");
}

// Spans of `text` alternating between matches and the gaps between them (HF's Pattern::find_matches).
std::vector<Span> MatchSpans(const SplitPattern* regex, const std::string* literal, std::string_view text,
                             bool invert) {
  Matches matches;
  if (regex != nullptr) {
    regex->FindAll(text, &matches);
  } else {
    for (size_t at = text.find(*literal); at != std::string_view::npos; at = text.find(*literal, at)) {
      matches.emplace_back(at, at + literal->size());
      at += literal->size();
    }
  }
  std::vector<Span> spans;
  size_t previous = 0;
  for (const auto& [begin, end] : matches) {
    if (previous != begin) spans.push_back({previous, begin, invert});
    spans.push_back({begin, end, !invert});
    previous = end;
  }
  if (previous != text.size()) spans.push_back({previous, text.size(), invert});
  return spans;
}

// Applies HF's SplitDelimiterBehavior to `spans` and appends the non-empty pieces of `text`.
void SplitBy(std::string_view text, const std::vector<Span>& spans, SplitBehavior behavior,
             std::vector<std::string>* out) {
  std::vector<std::pair<size_t, size_t>> pieces;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) pieces.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) pieces.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !pieces.empty()) {
          pieces.back().second = s.end;
        } else {
          pieces.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !pieces.empty()) {
          pieces.back().second = s.end;
        } else {
          pieces.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;  // walking right to left: "previous" is the span to the right
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !pieces.empty()) {
          pieces.back().first = it->begin;
        } else {
          pieces.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
  }
  for (const auto& [begin, end] : pieces) {
    if (begin != end) out->emplace_back(text.substr(begin, end - begin));
  }
}

// The pre-tokenizer regex `pattern`'s matcher; a pattern the build cannot match fails the load.
std::unique_ptr<SplitPattern> CompilePattern(std::string_view pattern) {
  try {
    return CompileSplitPattern(std::string(pattern));
  } catch (const std::runtime_error& e) {
    Fail(e.what());
  }
}

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their pre-tokenization (empty pieces dropped).
  virtual void Apply(std::vector<std::string>* pieces) const = 0;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        regex_(use_regex ? CompilePattern(kGpt2Pattern) : nullptr) {}

  void Apply(std::vector<std::string>* pieces) const override {
    const ByteLevelTable& table = ByteLevel();
    std::vector<std::string> out;
    std::vector<std::string> split;
    for (std::string& piece : *pieces) {
      if (add_prefix_space_ && (piece.empty() || piece[0] != ' ')) piece.insert(piece.begin(), ' ');
      split.clear();
      if (regex_ != nullptr) {
        SplitBy(piece, MatchSpans(regex_.get(), nullptr, piece, false), SplitBehavior::kIsolated, &split);
      } else if (!piece.empty()) {
        split.push_back(std::move(piece));
      }
      for (const std::string& s : split) {
        std::string mapped;
        mapped.reserve(s.size() * 2);
        for (unsigned char b : s) mapped += table.byte_to_utf8[b];
        out.push_back(std::move(mapped));
      }
    }
    *pieces = std::move(out);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<SplitPattern> regex_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  // Exactly one of `regex` / `literal` is used; the other is empty.
  SplitPreTokenizer(std::unique_ptr<SplitPattern> regex, std::string literal, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), literal_(std::move(literal)), behavior_(behavior), invert_(invert) {}

  void Apply(std::vector<std::string>* pieces) const override {
    std::vector<std::string> out;
    for (const std::string& piece : *pieces) {
      SplitBy(piece, MatchSpans(regex_.get(), &literal_, piece, invert_), behavior_, &out);
    }
    *pieces = std::move(out);
  }

 private:
  std::unique_ptr<SplitPattern> regex_;
  std::string literal_;
  SplitBehavior behavior_;
  bool invert_;
};

// HF's Digits splits on Rust's char::is_numeric, i.e. general category N.
class DigitsPreTokenizer : public SplitPreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual_digits)
      : SplitPreTokenizer(CompilePattern(kNumberPattern), "",
                          individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false) {}
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void Apply(std::vector<std::string>* pieces) const override {
    for (const auto& step : steps_) step->Apply(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

std::string TypeOf(const json& component) {
  auto it = component.find("type");
  return it != component.end() && it->is_string() ? it->get<std::string>() : std::string("<untyped>");
}

std::unique_ptr<PreTokenizer> ParsePreTokenizer(const json& j) {
  const std::string type = TypeOf(j);
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(j.value("add_prefix_space", true), j.value("use_regex", true));
  }
  if (type == "Split") {
    const json& pattern = j.at("pattern");
    const SplitBehavior behavior = ParseBehavior(j.at("behavior").get<std::string>());
    const bool invert = j.value("invert", false);
    if (pattern.contains("Regex")) {
      return std::make_unique<SplitPreTokenizer>(CompilePattern(pattern["Regex"].get<std::string>()), "", behavior,
                                                 invert);
    }
    if (pattern.contains("String")) {
      const std::string literal = pattern["String"].get<std::string>();
      if (literal.empty()) Fail("Split with an empty String pattern is not supported");
      return std::make_unique<SplitPreTokenizer>(nullptr, literal, behavior, invert);
    }
    Fail("Split pattern " + pattern.dump() + " is not supported");
  }
  if (type == "Digits") return std::make_unique<DigitsPreTokenizer>(j.value("individual_digits", false));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const json& step : j.at("pretokenizers")) steps.push_back(ParsePreTokenizer(step));
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  Fail("pre_tokenizer " + type + " is not supported");
}

// ---------------------------------------------------------------------------------------------
// Added tokens

struct AddedToken {
  std::string content;
  int32_t id;
  bool special, lstrip, rstrip, single_word, normalized;
  std::string matched;  // content as found in the text: normalized when `normalized` (HF's normalized_cache)
};

// A piece of the input: text offsets, and the id when it is an added token (else -1).
struct InputPiece {
  size_t begin, end;
  int32_t added_id;
};

// Finds added tokens leftmost-longest, as HF's Aho-Corasick automaton (MatchKind::LeftmostLongest).
class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(std::vector<const AddedToken*> tokens) : tokens_(std::move(tokens)) {
    std::stable_sort(tokens_.begin(), tokens_.end(),
                     [](const AddedToken* a, const AddedToken* b) { return a->matched.size() > b->matched.size(); });
    for (size_t i = 0; i < tokens_.size(); ++i) {
      if (tokens_[i]->matched.empty()) continue;
      by_first_byte_[static_cast<unsigned char>(tokens_[i]->matched[0])].push_back(i);
    }
  }

  bool empty() const { return tokens_.empty(); }

  // Appends the pieces of text[begin, end) to `out`, as HF's AddedVocabulary::find_matches.
  void Split(std::string_view text, size_t begin, size_t end, std::vector<InputPiece>* out) const {
    const std::string_view sentence = text.substr(begin, end - begin);
    size_t start_offset = 0;  // end of the previous added token, relative to `sentence`
    size_t position = 0;
    const AddedToken* token = nullptr;
    size_t start = 0;
    while ((token = NextMatch(sentence, position, &start)) != nullptr) {
      size_t stop = start + token->matched.size();
      position = stop;
      if (token->single_word) {
        const bool space_before = start == 0 || !EndsWithWordChar(sentence.substr(0, start));
        const bool space_after = stop == sentence.size() || !StartsWithWordChar(sentence.substr(stop));
        if (!space_before || !space_after) continue;
      }
      if (token->lstrip) start = std::max(TrailingSpaceStart(sentence.substr(0, start)), start_offset);
      if (token->rstrip) stop += LeadingSpaceLength(sentence.substr(stop));
      if (start_offset < start) out->push_back({begin + start_offset, begin + start, -1});
      out->push_back({begin + start, begin + stop, token->id});
      start_offset = stop;
    }
    if (start_offset != sentence.size()) out->push_back({begin + start_offset, end, -1});
  }

 private:
  // The leftmost-longest added token at or after `position`; *start receives where it begins.
  const AddedToken* NextMatch(std::string_view s, size_t position, size_t* start) const {
    for (size_t i = position; i < s.size(); ++i) {
      for (size_t index : by_first_byte_[static_cast<unsigned char>(s[i])]) {
        const std::string& content = tokens_[index]->matched;
        if (s.compare(i, content.size(), content) == 0) {
          *start = i;
          return tokens_[index];
        }
      }
    }
    return nullptr;
  }

  // Rust's \w (HF's single_word check) and char::is_whitespace (its lstrip and rstrip).
  static bool EndsWithWordChar(std::string_view s) {
    size_t len;
    return !s.empty() && IsWordChar(DecodeCodePoint(s, LastCharStart(s), &len));
  }
  static bool StartsWithWordChar(std::string_view s) {
    size_t len;
    return !s.empty() && IsWordChar(DecodeCodePoint(s, 0, &len));
  }
  static size_t TrailingSpaceStart(std::string_view s) {
    size_t start = s.size(), len;
    while (start > 0) {
      const size_t last = LastCharStart(s.substr(0, start));
      if (!IsWhiteSpace(DecodeCodePoint(s, last, &len))) break;
      start = last;
    }
    return start;
  }
  static size_t LeadingSpaceLength(std::string_view s) {
    size_t end = 0, len = 0;
    for (; end < s.size(); end += len) {
      if (!IsWhiteSpace(DecodeCodePoint(s, end, &len))) break;
    }
    return end;
  }

  std::vector<const AddedToken*> tokens_;  // longest first
  std::array<std::vector<size_t>, 256> by_first_byte_;
};

// ---------------------------------------------------------------------------------------------
// Post-processors

// The ids a post-processor puts around the encoded sequence: nullptr stands for the sequence.
using Template = std::vector<const std::vector<int32_t>*>;

// `special_ids` is a list so that the template's pointers stay valid as it grows.
void ParsePostProcessor(const json& j, std::list<std::vector<int32_t>>* special_ids, Template* single) {
  const std::string type = TypeOf(j);
  if (type == "ByteLevel") return;  // only trims offsets
  if (type == "Sequence") {
    for (const json& step : j.at("processors")) ParsePostProcessor(step, special_ids, single);
    return;
  }
  if (type != "TemplateProcessing") Fail("post_processor " + type + " is not supported");
  Template pieces;
  for (const json& item : j.at("single")) {
    if (item.contains("Sequence")) {
      if (item["Sequence"].at("id") != "A") Fail("TemplateProcessing single template uses sequence B");
      pieces.push_back(nullptr);
    } else if (item.contains("SpecialToken")) {
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      const json& specials = j.at("special_tokens");
      if (!specials.contains(name)) Fail("TemplateProcessing special token " + json(name).dump() + " is not defined");
      special_ids->push_back(specials[name].at("ids").get<std::vector<int32_t>>());
      pieces.push_back(&special_ids->back());
    } else {
      Fail("TemplateProcessing item " + item.dump() + " is not supported");
    }
  }
  // A template inside a Sequence wraps what the previous processors produced.
  Template combined;
  for (const auto* piece : pieces) {
    if (piece == nullptr) {
      combined.insert(combined.end(), single->begin(), single->end());
    } else {
      combined.push_back(piece);
    }
  }
  *single = std::move(combined);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Tokenizer

struct Tokenizer::Impl {
  // BPE model
  std::unordered_map<std::string, int32_t> vocab;
  std::unordered_map<uint32_t, int32_t> char_ids;  // single-character vocabulary entries by code point
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges;  // (left, right) → (rank, merged id)
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  int32_t unk_id = -1;
  std::array<int32_t, 256> byte_fallback_ids{};  // <0xXX> ids, or -1

  bool nfc = false;  // the normalizer: NFC, or none
  std::vector<AddedToken> added_tokens;
  std::unordered_map<std::string, int32_t> added_token_ids;
  std::unique_ptr<AddedTokenMatcher> raw_matcher;         // normalized: false
  std::unique_ptr<AddedTokenMatcher> normalized_matcher;  // normalized: true
  std::unique_ptr<PreTokenizer> pre_tokenizer;

  std::list<std::vector<int32_t>> special_id_lists;  // storage the template points into
  Template single_template{nullptr};

  // By id: token string, decoded bytes, whether a token exists, whether it is special.
  std::vector<std::string> id_to_token;
  std::vector<std::string> id_to_bytes;
  std::vector<bool> id_exists;
  std::vector<bool> id_special;

  // BPE results per pre-token (HF keeps the same kind of cache).
  static constexpr size_t kCacheCapacity = 50000;
  static constexpr size_t kCacheMaxWordBytes = 256;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void Load(const json& j);
  void LoadNormalizer(const json& normalizer);
  void EncodeNormalized(const std::string& text, std::vector<int32_t>* ids) const;
  void LoadModel(const json& model);
  void Bpe(const std::string& word, std::vector<int32_t>* ids) const;
  void BpeUncached(const std::string& word, std::vector<int32_t>* ids) const;
};

void Tokenizer::Impl::LoadModel(const json& model) {
  const std::string type = model.contains("type") ? TypeOf(model) : (model.contains("merges") ? "BPE" : "<untyped>");
  if (type != "BPE") Fail("model " + type + " is not supported (only BPE)");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0) {
    Fail("BPE dropout is not supported");
  }
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(affix) && model[affix].is_string() && !model[affix].get<std::string>().empty()) {
      Fail(std::string("BPE ") + affix + " is not supported");
    }
  }
  ignore_merges = model.value("ignore_merges", false);
  byte_fallback = model.value("byte_fallback", false);
  fuse_unk = model.value("fuse_unk", false);

  for (const auto& [token, id] : model.at("vocab").items()) {
    const int32_t token_id = id.get<int32_t>();
    vocab.emplace(token, token_id);
    size_t len = 0;
    if (!token.empty() && IsValidUtf8(token) && (NextUtf8(token, 0, &len), len == token.size())) {
      char_ids.emplace(DecodeCodePoint(token, 0, &len), token_id);
    }
  }
  const auto id_of = [&](const std::string& token) {
    auto it = vocab.find(token);
    if (it == vocab.end()) Fail("merge token " + json(token).dump() + " is not in the vocabulary");
    return it->second;
  };
  uint32_t rank = 0;
  for (const json& merge : model.at("merges")) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string line = merge.get<std::string>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        Fail("merge " + std::to_string(rank + 1) + " is not two tokens separated by one space");
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      Fail("merge " + std::to_string(rank + 1) + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(id_of(left))) << 32) |
                         static_cast<uint32_t>(id_of(right));
    // A repeated pair: the last one wins, as in HF.
    merges.insert_or_assign(key, std::make_pair(rank, id_of(left + right)));
    ++rank;
  }

  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const std::string unk = model["unk_token"].get<std::string>();
    auto it = vocab.find(unk);
    if (it == vocab.end()) Fail("unk_token " + json(unk).dump() + " is not in the vocabulary");
    unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = vocab.find(name);
    byte_fallback_ids[b] = it == vocab.end() ? -1 : it->second;
  }
}

void Tokenizer::Impl::LoadNormalizer(const json& normalizer) {
  const std::string type = TypeOf(normalizer);
  if (type == "NFC") {
    nfc = true;
  } else if (type == "Sequence") {
    for (const json& step : normalizer.at("normalizers")) LoadNormalizer(step);
  } else {
    Fail("normalizer " + type + " is not supported (only NFC or null)");
  }
}

void Tokenizer::Impl::Load(const json& j) {
  if (j.contains("normalizer") && !j["normalizer"].is_null()) LoadNormalizer(j["normalizer"]);
  for (const char* option : {"truncation", "padding"}) {
    if (j.contains(option) && !j[option].is_null()) Fail(std::string(option) + " is not supported (only null)");
  }
  LoadModel(j.at("model"));

  for (const json& t : j.value("added_tokens", json::array())) {
    added_tokens.push_back({t.at("content").get<std::string>(), t.at("id").get<int32_t>(), t.value("special", false),
                            t.value("lstrip", false), t.value("rstrip", false), t.value("single_word", false),
                            t.value("normalized", true), std::string()});
    AddedToken& added = added_tokens.back();
    added.matched = added.normalized && nfc ? Nfc(added.content) : added.content;
  }
  for (const AddedToken& t : added_tokens) added_token_ids.emplace(t.content, t.id);
  std::vector<const AddedToken*> raw, normalized;
  for (const AddedToken& t : added_tokens) (t.normalized ? normalized : raw).push_back(&t);
  if (!raw.empty()) raw_matcher = std::make_unique<AddedTokenMatcher>(raw);
  if (!normalized.empty()) normalized_matcher = std::make_unique<AddedTokenMatcher>(normalized);

  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
    pre_tokenizer = ParsePreTokenizer(j["pre_tokenizer"]);
  }
  if (j.contains("post_processor") && !j["post_processor"].is_null()) {
    ParsePostProcessor(j["post_processor"], &special_id_lists, &single_template);
  }
  const json decoder = j.value("decoder", json());
  if (decoder.is_null() || TypeOf(decoder) != "ByteLevel") {
    const std::string type = decoder.is_null() ? std::string("null") : TypeOf(decoder);
    Fail("decoder " + type + " is not supported (only ByteLevel)");
  }

  // Id tables: added tokens take precedence over the model vocabulary, as in HF.
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab) max_id = std::max(max_id, id);
  for (const AddedToken& t : added_tokens) max_id = std::max(max_id, t.id);
  const size_t size = static_cast<size_t>(max_id + 1);
  id_to_token.assign(size, std::string());
  id_exists.assign(size, false);
  for (const auto& [token, id] : vocab) {
    if (id < 0) Fail("negative id in the vocabulary");
    id_to_token[id] = token;
    id_exists[id] = true;
  }
  std::unordered_set<std::string> special_contents;
  std::vector<std::string> decoded_token = id_to_token;  // what HF's decode sees: normalized added tokens
  for (const AddedToken& t : added_tokens) {
    if (t.id < 0) Fail("negative added token id");
    id_to_token[t.id] = t.content;
    decoded_token[t.id] = t.matched;
    id_exists[t.id] = true;
    if (t.special) special_contents.insert(t.content);
  }
  const ByteLevelTable& table = ByteLevel();
  id_to_bytes.assign(size, std::string());
  id_special.assign(size, false);
  for (size_t id = 0; id < size; ++id) {
    const std::string& token = decoded_token[id];
    id_special[id] = id_exists[id] && special_contents.count(token) > 0;
    // ByteLevel's decoder unmaps every character of the token, or, if one is not in the table,
    // keeps the token's own UTF-8.
    std::string bytes;
    size_t len = 0;
    bool all_mapped = IsValidUtf8(token);
    for (size_t i = 0; all_mapped && i < token.size(); i += len) {
      const uint32_t cp = DecodeCodePoint(token, i, &len);
      all_mapped = cp < table.char_to_byte.size() && table.char_to_byte[cp] >= 0;
      if (all_mapped) bytes.push_back(static_cast<char>(table.char_to_byte[cp]));
    }
    id_to_bytes[id] = all_mapped ? std::move(bytes) : token;
  }
}

void Tokenizer::Impl::BpeUncached(const std::string& word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbours in the linked list, -1 at the ends
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&symbols](int32_t id) {
    const int32_t index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, true});
  };
  // A run of unknown characters waits here so that fuse_unk can merge it into one unk token.
  bool unk_pending = false;
  for (size_t i = 0, len = 0; i < word.size(); i += len) {
    const uint32_t cp = DecodeCodePoint(word, i, &len);
    auto it = char_ids.find(cp);
    if (it != char_ids.end()) {
      if (unk_pending) add(unk_id);
      unk_pending = false;
      add(it->second);
      continue;
    }
    if (byte_fallback) {
      const auto byte_id = [&](size_t k) { return byte_fallback_ids[static_cast<unsigned char>(word[i + k])]; };
      bool all_bytes = true;
      for (size_t k = 0; k < len; ++k) all_bytes = all_bytes && byte_id(k) >= 0;
      if (all_bytes) {  // (HF emits these before a still pending unk token)
        for (size_t k = 0; k < len; ++k) add(byte_id(k));
        continue;
      }
    }
    if (unk_id >= 0) {
      if (unk_pending && !fuse_unk) add(unk_id);
      unk_pending = true;
    }
    // Without an unk token, HF drops the character.
  }
  if (unk_pending) add(unk_id);

  // Lowest rank first, then leftmost: the order of HF's merge queue, stale entries included.
  struct Merge {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator<(const Merge& other) const {
      return rank != other.rank ? rank > other.rank : pos > other.pos;
    }
  };
  const auto find_merge = [this](int32_t left, int32_t right) -> const std::pair<uint32_t, int32_t>* {
    auto it = merges.find((static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right));
    return it == merges.end() ? nullptr : &it->second;
  };
  std::vector<Merge> heap_storage;
  heap_storage.reserve(symbols.size());
  std::priority_queue<Merge> queue(std::less<Merge>(), std::move(heap_storage));
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const auto* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->first, static_cast<int32_t>(i), m->second});
    }
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // A stale entry: the pair at this position has changed since it was queued.
    const auto* current = find_merge(left.id, right.id);
    if (current == nullptr || current->second != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const auto* m = find_merge(symbols[left.prev].id, left.id)) queue.push({m->first, left.prev, m->second});
    }
    if (left.next >= 0) {
      if (const auto* m = find_merge(left.id, symbols[left.next].id)) queue.push({m->first, top.pos, m->second});
    }
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids->push_back(s.id);
  }
}

void Tokenizer::Impl::Bpe(const std::string& word, std::vector<int32_t>* ids) const {
  if (ignore_merges) {
    auto it = vocab.find(word);
    if (it != vocab.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(word);
    if (it != cache.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  BpeUncached(word, ids);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kCacheCapacity) cache.clear();
    cache.emplace(word, std::vector<int32_t>(ids->begin() + static_cast<std::ptrdiff_t>(first), ids->end()));
  }
}

void Tokenizer::Impl::EncodeNormalized(const std::string& text, std::vector<int32_t>* ids) const {
  std::vector<InputPiece> pieces;
  if (normalized_matcher) {
    normalized_matcher->Split(text, 0, text.size(), &pieces);
  } else {
    pieces.push_back({0, text.size(), -1});
  }
  std::vector<std::string> words;
  for (const InputPiece& piece : pieces) {
    if (piece.added_id >= 0) {
      ids->push_back(piece.added_id);
      continue;
    }
    if (piece.begin == piece.end) continue;
    words.assign(1, text.substr(piece.begin, piece.end - piece.begin));
    if (pre_tokenizer) pre_tokenizer->Apply(&words);
    for (const std::string& word : words) {
      if (!word.empty()) Bpe(word, ids);
    }
  }
}

Tokenizer Tokenizer::FromJson(const std::string& tokenizer_json_text) {
  json j;
  try {
    j = json::parse(tokenizer_json_text);
  } catch (const json::exception& e) {
    Fail(std::string("not valid JSON: ") + e.what());
  }
  auto impl = std::make_shared<Impl>();
  try {
    impl->Load(j);
  } catch (const json::exception& e) {
    Fail(std::string("unexpected structure: ") + e.what());
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::FromFile(const std::string& tokenizer_json_path) {
  std::ifstream file(tokenizer_json_path, std::ios::binary);
  if (!file) throw std::runtime_error("tokenizer: cannot open " + tokenizer_json_path);
  std::ostringstream text;
  text << file.rdbuf();
  try {
    return FromJson(text.str());
  } catch (const std::runtime_error& e) {  // name the file instead of "tokenizer.json"
    std::string message = e.what();
    if (message.rfind(kErrorPrefix, 0) == 0) message.erase(0, kErrorPrefix.size());
    throw std::runtime_error(tokenizer_json_path + ": " + message);
  }
}

std::vector<int32_t> Tokenizer::Encode(const std::string& text, bool add_special_tokens) const {
  const Impl& impl = *impl_;
  std::string repaired;
  const bool valid = IsValidUtf8(text);
  if (!valid) repaired = LossyUtf8(text);
  const std::string& input = valid ? text : repaired;

  // Added tokens first: those matched on the raw text, then, in each normalized piece between
  // them, the ones matched on normalized text.
  std::vector<InputPiece> raw_pieces;
  if (impl.raw_matcher) {
    impl.raw_matcher->Split(input, 0, input.size(), &raw_pieces);
  } else {
    raw_pieces.push_back({0, input.size(), -1});
  }
  std::vector<int32_t> ids;
  ids.reserve(input.size() / 3 + 4);
  for (const InputPiece& piece : raw_pieces) {
    if (piece.added_id >= 0) {
      ids.push_back(piece.added_id);
    } else if (piece.begin != piece.end) {
      const std::string text = input.substr(piece.begin, piece.end - piece.begin);
      impl.EncodeNormalized(impl.nfc ? Nfc(text) : text, &ids);
    }
  }
  if (!add_special_tokens) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + impl.single_template.size());
  for (const auto* piece : impl.single_template) {
    if (piece == nullptr) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.insert(out.end(), piece->begin(), piece->end());
    }
  }
  return out;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (skip_special_tokens && IsSpecial(id)) continue;
    bytes += TokenBytes(id);
  }
  return LossyUtf8(bytes);
}

const std::string& Tokenizer::TokenBytes(int32_t id) const {
  static const std::string kNone;
  const Impl& impl = *impl_;
  if (id < 0 || static_cast<size_t>(id) >= impl.id_to_bytes.size()) return kNone;
  return impl.id_to_bytes[id];
}

int32_t Tokenizer::TokenToId(const std::string& token) const {
  auto added = impl_->added_token_ids.find(token);
  if (added != impl_->added_token_ids.end()) return added->second;
  auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? -1 : it->second;
}

std::string Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_to_token.size()) return std::string();
  return impl_->id_to_token[id];
}

size_t Tokenizer::VocabSize() const { return impl_->id_to_token.size(); }

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_special.size() && impl_->id_special[id];
}

// ---------------------------------------------------------------------------------------------
// StreamDecoder

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamDecoder::Push(int32_t token) {
  if (skip_special_tokens_ && tokenizer_.IsSpecial(token)) return std::string();
  pending_ += tokenizer_.TokenBytes(token);
  // Everything before a trailing incomplete sequence decodes now exactly as it will in the full
  // text: the lossy decoder's choice at each position depends only on the bytes up to the end of
  // that character (or ill-formed subsequence), all of which are already here.
  const size_t ready = CompletePrefixLength(pending_);
  std::string delta = LossyUtf8(std::string_view(pending_).substr(0, ready));
  pending_.erase(0, ready);
  return delta;
}

std::string StreamDecoder::Flush() {
  std::string rest = LossyUtf8(pending_);
  pending_.clear();
  return rest;
}

}  // namespace lowbit
