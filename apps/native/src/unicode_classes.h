// The Unicode character classes of HF's pre-tokenizer regexes and added-token checks, from tables
// generated out of HF `tokenizers` itself (tools/make_unicode_class_table.py).
#pragma once

#include <array>
#include <cstdint>

namespace lowbit {

enum UnicodeClass : uint8_t {
  kLetter = 1,      // \p{L}
  kNumber = 2,      // \p{N}
  kWhiteSpace = 4,  // Unicode White_Space: Oniguruma's \s, Rust's char::is_whitespace
  kWordChar = 8,    // Rust regex's \w: Alphabetic, M, Nd, Pc, Join_Control
};

// Code points below this (ASCII and the other two-byte UTF-8 characters, the bulk of most text)
// have their classes in a flat array.
constexpr uint32_t kUnicodeDirectLimit = 0x800;
extern const std::array<uint8_t, kUnicodeDirectLimit> kUnicodeDirectClasses;

// The UnicodeClass bits of code point `cp`, and the range [*first, *end) of code points that
// share them (a caller can skip the look-up for the next character in that range).
uint8_t UnicodeClassRangeOf(uint32_t cp, uint32_t* first, uint32_t* end);

inline uint8_t UnicodeClassesOf(uint32_t cp) {
  if (cp < kUnicodeDirectLimit) return kUnicodeDirectClasses[cp];
  uint32_t first, end;
  return UnicodeClassRangeOf(cp, &first, &end);
}

inline bool IsLetter(uint32_t cp) { return UnicodeClassesOf(cp) & kLetter; }
inline bool IsNumber(uint32_t cp) { return UnicodeClassesOf(cp) & kNumber; }
inline bool IsWhiteSpace(uint32_t cp) { return UnicodeClassesOf(cp) & kWhiteSpace; }
inline bool IsWordChar(uint32_t cp) { return UnicodeClassesOf(cp) & kWordChar; }

}  // namespace lowbit
