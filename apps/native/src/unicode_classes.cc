#include "unicode_classes.h"

#include <algorithm>
#include <iterator>

namespace lowbit {
namespace {

struct UnicodeClassRange {
  uint32_t first;  // the classes hold from here to the next range's first code point
  uint8_t classes;
};

#include "unicode_class_table.inc"

constexpr std::array<uint8_t, kUnicodeDirectLimit> DirectClasses() {
  std::array<uint8_t, kUnicodeDirectLimit> classes{};
  size_t range = 0;
  for (uint32_t cp = 0; cp < kUnicodeDirectLimit; ++cp) {
    while (kUnicodeClassRanges[range + 1].first <= cp) ++range;
    classes[cp] = kUnicodeClassRanges[range].classes;
  }
  return classes;
}

}  // namespace

constexpr std::array<uint8_t, kUnicodeDirectLimit> kUnicodeDirectClasses = DirectClasses();

uint8_t UnicodeClassRangeOf(uint32_t cp, uint32_t* first, uint32_t* end) {
  const auto after = std::upper_bound(std::begin(kUnicodeClassRanges), std::end(kUnicodeClassRanges), cp,
                                      [](uint32_t c, const UnicodeClassRange& r) { return c < r.first; });
  const auto range = std::prev(after);
  *first = range->first;
  *end = after == std::end(kUnicodeClassRanges) ? 0x110000 : after->first;
  return range->classes;
}

}  // namespace lowbit
