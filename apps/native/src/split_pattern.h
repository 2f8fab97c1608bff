// The regexes of HF pre-tokenizers (Split, ByteLevel's own, Digits): where they match in text.
//
// The patterns the supported model families use have hand-written matchers that follow the
// regex semantics HF gets from Oniguruma, on character classes generated from HF itself, so
// every build (PCRE2 or not, any platform) splits text identically. Other patterns need PCRE2
// (LOWBIT_HAVE_PCRE2); without it they are refused when the tokenizer loads.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowbit {

// ByteLevel's pattern (GPT-2's), used when its use_regex is true.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama-3's Split pattern, and Qwen2's (Qwen3's too), which takes one digit at a time.
inline constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// The Digits pre-tokenizer's: one character of category N.
inline constexpr std::string_view kNumberPattern = R"(\p{N})";

// (begin, end) byte offsets of successive matches.
using Matches = std::vector<std::pair<size_t, size_t>>;

class SplitPattern {
 public:
  virtual ~SplitPattern() = default;
  // The matches in valid UTF-8 `text`, as HF's find_iter yields them (appended to `matches`).
  virtual void FindAll(std::string_view text, Matches* matches) const = 0;
};

// The hand-written matcher of one of the patterns above (compared as exact strings), else nullptr.
std::unique_ptr<SplitPattern> BuiltInSplitPattern(std::string_view pattern);

#ifdef LOWBIT_HAVE_PCRE2
// PCRE2's matcher of any Oniguruma pattern; throws std::runtime_error if it does not compile.
std::unique_ptr<SplitPattern> Pcre2SplitPattern(const std::string& pattern);
#endif

// The built-in matcher of `pattern`, else PCRE2's when the build has it; throws a one-line
// std::runtime_error for a pattern that neither can match.
std::unique_ptr<SplitPattern> CompileSplitPattern(const std::string& pattern);

}  // namespace lowbit
