#include "unicode_classes.h"

#include <algorithm>
#include <array>
#include <iterator>

namespace lowbit {
namespace {

struct UnicodeClassRange {
  uint32_t first;  // the classes hold from here to the next range's first code point
  uint8_t classes;
};

#include "unicode_class_table.inc"

uint8_t LookUpRanges(uint32_t cp) {
  const auto after = std::upper_bound(std::begin(kUnicodeClassRanges), std::end(kUnicodeClassRanges), cp,
                                      [](uint32_t c, const UnicodeClassRange& r) { return c < r.first; });
  return std::prev(after)->classes;
}

// Code points below this are looked up directly: they cover ASCII, Latin, Greek, Cyrillic and
// the other two-byte UTF-8 scripts, the bulk of most text.
constexpr uint32_t kDirectLimit = 0x800;

struct DirectTable {
  std::array<uint8_t, kDirectLimit> classes;
  DirectTable() {
    for (uint32_t cp = 0; cp < kDirectLimit; ++cp) classes[cp] = LookUpRanges(cp);
  }
};

const DirectTable kDirect;  // built from constant data only, so safe during static initialization

}  // namespace

uint8_t UnicodeClassesOf(uint32_t cp) { return cp < kDirectLimit ? kDirect.classes[cp] : LookUpRanges(cp); }

}  // namespace lowbit
