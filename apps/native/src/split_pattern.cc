#include "split_pattern.h"

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "unicode_classes.h"
#include "utf8.h"

namespace lowbit {
namespace {

// What the patterns tell apart: \p{L}, \p{N}, \s, and everything else ([^\s\p{L}\p{N}]).
enum class Kind { kLetter, kNumber, kSpace, kOther };

Kind KindOf(uint8_t classes) {
  if (classes & kLetter) return Kind::kLetter;
  if (classes & kNumber) return Kind::kNumber;
  if (classes & kWhiteSpace) return Kind::kSpace;
  return Kind::kOther;
}

// Valid UTF-8 text, read one code point at a time.
class Utf8Text {
 public:
  explicit Utf8Text(std::string_view s) : s_(s) {}

  size_t size() const { return s_.size(); }
  unsigned char Byte(size_t i) const { return static_cast<unsigned char>(s_[i]); }

  // The code point at byte `i` (< size()); *next receives the offset of the one after it.
  uint32_t CodePoint(size_t i, size_t* next) const {
    const size_t len = Utf8Length(Byte(i));
    *next = i + len;
    return CodePointAt(s_, i, len);
  }

  Kind KindAt(size_t i, size_t* next) const { return KindOf(ClassesOf(CodePoint(i, next))); }

  // End of the run of `kind` characters that starts at `i`.
  size_t RunEnd(size_t i, Kind kind) const {
    size_t next;
    while (i < size() && KindAt(i, &next) == kind) i = next;
    return i;
  }

  // The lower-case ASCII letter at `i` (an upper-case one too, and U+017F LONG S as 's', when
  // `ignore_case`: the only non-ASCII character that Oniguruma case-folds to a contraction's
  // letter), else 0; *next receives the offset after it.
  char ContractionLetter(size_t i, bool ignore_case, size_t* next) const {
    if (i >= size()) return 0;
    const unsigned char b = Byte(i);
    *next = i + 1;
    if (b >= 'a' && b <= 'z') return static_cast<char>(b);
    if (!ignore_case) return 0;
    if (b >= 'A' && b <= 'Z') return static_cast<char>(b - 'A' + 'a');
    if (b == 0xC5 && i + 1 < size() && Byte(i + 1) == 0xBF) {
      *next = i + 2;
      return 's';
    }
    return 0;
  }

  // End of 's|'t|'re|'ve|'m|'ll|'d at `i`, or 0 where none matches.
  size_t ContractionEnd(size_t i, bool ignore_case) const {
    if (Byte(i) != '\'') return 0;
    size_t after_first, after_second;
    const char first = ContractionLetter(i + 1, ignore_case, &after_first);
    if (first == 's' || first == 't' || first == 'm' || first == 'd') return after_first;
    if (first != 'r' && first != 'v' && first != 'l') return 0;
    const char second = ContractionLetter(after_first, ignore_case, &after_second);
    const bool matches = (first == 'l' && second == 'l') || (first != 'l' && second == 'e');
    return matches ? after_second : 0;
  }

  // End of \s+(?!\S)|\s+ at white space `i`: the whole run when it ends the text or is one
  // character long; else all of it but its last character, which is left to start the next match.
  size_t SpaceMatchEnd(size_t i) const {
    size_t last = i, next;
    KindAt(i, &next);
    while (next < size()) {
      size_t after;
      if (KindAt(next, &after) != Kind::kSpace) break;
      last = next;
      next = after;
    }
    return next == size() || last == i ? next : last;
  }

  // End of \s*[\r\n]+ at white space `i`: just after the last \r or \n of the white space run,
  // or 0 if the run has none.
  size_t SpaceThroughNewlineEnd(size_t i) const {
    size_t end = 0, next;
    for (; i < size() && KindAt(i, &next) == Kind::kSpace; i = next) {
      if (Byte(i) == '\r' || Byte(i) == '\n') end = next;
    }
    return end;
  }

  // End of [\r\n]* at `i`.
  size_t NewlinesEnd(size_t i) const {
    while (i < size() && (Byte(i) == '\r' || Byte(i) == '\n')) ++i;
    return i;
  }

 private:
  // Text in one script mostly stays in one range of the class table: remember the last one.
  uint8_t ClassesOf(uint32_t cp) const {
    if (cp < kUnicodeDirectLimit) return kUnicodeDirectClasses[cp];
    if (cp < cached_first_ || cp >= cached_end_) cached_classes_ = UnicodeClassRangeOf(cp, &cached_first_, &cached_end_);
    return cached_classes_;
  }

  std::string_view s_;
  mutable uint32_t cached_first_ = 0, cached_end_ = 0;
  mutable uint8_t cached_classes_ = 0;
};

// Patterns that match somewhere at every position: the matches tile the text.
class TilingPattern : public SplitPattern {
 public:
  void FindAll(std::string_view text, Matches* matches) const override {
    const Utf8Text t(text);
    for (size_t i = 0; i < t.size();) {
      const size_t end = MatchEnd(t, i);
      matches->emplace_back(i, end);
      i = end;
    }
  }

 private:
  // End of the match that starts at `i` (< size()); always past `i`.
  virtual size_t MatchEnd(const Utf8Text& t, size_t i) const = 0;
};

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
class Gpt2Pattern : public TilingPattern {
  size_t MatchEnd(const Utf8Text& t, size_t i) const override {
    if (const size_t end = t.ContractionEnd(i, false)) return end;
    size_t next;
    const Kind kind = t.KindAt(i, &next);
    if (t.Byte(i) == ' ' && next < t.size()) {
      size_t after;
      const Kind following = t.KindAt(next, &after);
      if (following != Kind::kSpace) return t.RunEnd(next, following);
    }
    return kind == Kind::kSpace ? t.SpaceMatchEnd(i) : t.RunEnd(i, kind);
  }
};

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
class Llama3Pattern : public TilingPattern {
 public:
  explicit Llama3Pattern(int max_digits) : max_digits_(max_digits) {}

 private:
  size_t MatchEnd(const Utf8Text& t, size_t i) const override {
    if (const size_t end = t.ContractionEnd(i, true)) return end;
    size_t next, after;
    const Kind kind = t.KindAt(i, &next);
    if (kind == Kind::kLetter) return t.RunEnd(i, Kind::kLetter);
    const bool newline = t.Byte(i) == '\r' || t.Byte(i) == '\n';
    const Kind following = next < t.size() ? t.KindAt(next, &after) : Kind::kOther;
    if (kind != Kind::kNumber && !newline && next < t.size() && following == Kind::kLetter) {
      return t.RunEnd(next, Kind::kLetter);
    }
    if (kind == Kind::kNumber) return DigitsEnd(t, i);
    if (kind == Kind::kOther) return t.NewlinesEnd(t.RunEnd(i, Kind::kOther));
    if (t.Byte(i) == ' ' && next < t.size() && following == Kind::kOther) {
      return t.NewlinesEnd(t.RunEnd(next, Kind::kOther));
    }
    if (const size_t end = t.SpaceThroughNewlineEnd(i)) return end;
    return t.SpaceMatchEnd(i);
  }

  size_t DigitsEnd(const Utf8Text& t, size_t i) const {
    size_t next;
    for (int n = 0; n < max_digits_ && i < t.size() && t.KindAt(i, &next) == Kind::kNumber; ++n) i = next;
    return i;
  }

  int max_digits_;
};

// \p{N}: each number character is a match of its own.
class NumberPattern : public SplitPattern {
 public:
  void FindAll(std::string_view text, Matches* matches) const override {
    const Utf8Text t(text);
    size_t next;
    for (size_t i = 0; i < t.size(); i = next) {
      bool number;
      if (t.Byte(i) < 0x80) {  // ASCII, most of many texts, without the table look-up
        next = i + 1;
        number = t.Byte(i) >= '0' && t.Byte(i) <= '9';
      } else {
        number = t.KindAt(i, &next) == Kind::kNumber;
      }
      if (number) matches->emplace_back(i, next);
    }
  }
};

}  // namespace

std::unique_ptr<SplitPattern> BuiltInSplitPattern(std::string_view pattern) {
  if (pattern == kGpt2Pattern) return std::make_unique<Gpt2Pattern>();
  if (pattern == kLlama3Pattern) return std::make_unique<Llama3Pattern>(3);
  if (pattern == kQwen2Pattern) return std::make_unique<Llama3Pattern>(1);
  if (pattern == kNumberPattern) return std::make_unique<NumberPattern>();
  return nullptr;
}

std::unique_ptr<SplitPattern> CompileSplitPattern(const std::string& pattern) {
  if (auto built_in = BuiltInSplitPattern(pattern)) return built_in;
#ifdef LOWBIT_HAVE_PCRE2
  return Pcre2SplitPattern(pattern);
#else
  throw std::runtime_error("regex " + nlohmann::json(pattern).dump() +
                           " is not a built-in pre-tokenizer pattern, and this build has no PCRE2 for others "
                           "(LOWBIT_PCRE2=OFF)");
#endif
}

}  // namespace lowbit
