// The Unicode character classes of HF's pre-tokenizer regexes and added-token checks, from tables
// generated out of HF `tokenizers` itself (tools/make_unicode_class_table.py).
#pragma once

#include <cstdint>

namespace lowbit {

enum UnicodeClass : uint8_t {
  kLetter = 1,      // \p{L}
  kNumber = 2,      // \p{N}
  kWhiteSpace = 4,  // Unicode White_Space: Oniguruma's \s, Rust's char::is_whitespace
  kWordChar = 8,    // Rust regex's \w: Alphabetic, M, Nd, Pc, Join_Control
};

// The UnicodeClass bits of code point `cp`.
uint8_t UnicodeClassesOf(uint32_t cp);

inline bool IsLetter(uint32_t cp) { return UnicodeClassesOf(cp) & kLetter; }
inline bool IsNumber(uint32_t cp) { return UnicodeClassesOf(cp) & kNumber; }
inline bool IsWhiteSpace(uint32_t cp) { return UnicodeClassesOf(cp) & kWhiteSpace; }
inline bool IsWordChar(uint32_t cp) { return UnicodeClassesOf(cp) & kWordChar; }

}  // namespace lowbit
