// The built-in pre-tokenizer matchers against PCRE2 (split_pattern_test, no arguments).
//
// First the character classes: for every code point, the generated tables against PCRE2's own
// Unicode properties. They may differ only where PCRE2's Unicode (older than HF's, which the
// tables follow) leaves the code point unassigned. Then every built-in pattern on a generated
// corpus (mixed scripts, digits, emoji, combining marks, every kind of white space, contractions in
// any case, random code points), split by both: the matches must be identical. Random code points
// come from those both engines class alike. Last, a timing line per pattern (not checked).
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "split_pattern.h"
#include "unicode_classes.h"
#include "utf8.h"

namespace {

using lowbit::AppendUtf8;
using lowbit::Matches;
using lowbit::SplitPattern;

bool IsSurrogate(uint32_t cp) { return cp >= 0xD800 && cp <= 0xDFFF; }

// PCRE2's classes of every code point, in the bits of lowbit::UnicodeClass, and whether PCRE2
// has it unassigned: each one-character property pattern run over a text of all code points.
struct Pcre2Classes {
  std::vector<uint8_t> classes = std::vector<uint8_t>(0x110000, 0);
  std::vector<bool> unassigned = std::vector<bool>(0x110000, false);

  Pcre2Classes() {
    std::string all;
    std::vector<uint32_t> cp_at(0x110000 * 4, 0);  // code point starting at each byte offset
    for (uint32_t cp = 0; cp < 0x110000; ++cp) {
      if (IsSurrogate(cp)) continue;
      cp_at[all.size()] = cp;
      AppendUtf8(cp, &all);
    }
    const auto each_match = [&](const char* pattern, auto on_match) {
      Matches matches;
      lowbit::Pcre2SplitPattern(pattern)->FindAll(all, &matches);
      for (const auto& [begin, end] : matches) on_match(cp_at[begin]);
    };
    each_match(R"(\p{L})", [&](uint32_t cp) { classes[cp] |= lowbit::kLetter; });
    each_match(R"(\p{N})", [&](uint32_t cp) { classes[cp] |= lowbit::kNumber; });
    each_match(R"(\s)", [&](uint32_t cp) { classes[cp] |= lowbit::kWhiteSpace; });
    each_match(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])",
               [&](uint32_t cp) { classes[cp] |= lowbit::kWordChar; });
    each_match(R"(\p{Cn})", [&](uint32_t cp) { unassigned[cp] = true; });
  }
};

// Checks the tables against PCRE2; returns the code points both class alike.
std::vector<uint32_t> CheckClasses(const Pcre2Classes& pcre2, lowbit::test::Checks* checks) {
  std::vector<uint32_t> agreed;
  size_t newer = 0, wrong = 0;
  for (uint32_t cp = 0; cp < 0x110000; ++cp) {
    if (IsSurrogate(cp)) continue;
    if (lowbit::UnicodeClassesOf(cp) == pcre2.classes[cp]) {
      agreed.push_back(cp);
    } else if (pcre2.unassigned[cp]) {
      ++newer;
    } else if (++wrong <= 10) {
      std::fprintf(stderr, "U+%04X: tables %d, PCRE2 %d\n", cp, lowbit::UnicodeClassesOf(cp), pcre2.classes[cp]);
    }
  }
  std::printf("classes: %zu code points as PCRE2, %zu differ where PCRE2's Unicode is older\n", agreed.size(), newer);
  checks->Expect(wrong == 0, std::to_string(wrong) + " assigned code points classed unlike PCRE2");
  return agreed;
}

// Generated text: pieces of many kinds, often run together without a space.
class CorpusGenerator {
 public:
  explicit CorpusGenerator(std::vector<uint32_t> random_pool) : pool_(std::move(random_pool)) {}

  std::string Document() {
    std::string doc;
    const int pieces = Uniform(1, 60);
    for (int i = 0; i < pieces; ++i) {
      if (Uniform(0, 2) == 0) doc += ' ';
      AppendPiece(&doc);
    }
    return doc;
  }

 private:
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  template <typename T>
  const T& Pick(const std::vector<T>& items) {
    return items[static_cast<size_t>(Uniform(0, static_cast<int>(items.size()) - 1))];
  }
  void AppendRange(uint32_t first, uint32_t last, int min_len, int max_len, std::string* out) {
    for (int n = Uniform(min_len, max_len); n > 0; --n) {
      AppendUtf8(static_cast<uint32_t>(Uniform(static_cast<int>(first), static_cast<int>(last))), out);
    }
  }

  void AppendPiece(std::string* out) {
    static const std::vector<std::string> kContractions = {
        "'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'rE", "'ve", "'VE", "'vE", "'m", "'M", "'ll", "'LL", "'Ll",
        "'d", "'D", "'\u017f", "'\u212a", "'x", "''", "'", "'r", "'l", "'v", "'\u0130", "'\u0131"};
    static const std::vector<std::string> kSpaces = {
        " ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", "\r\n\r\n", " \n ", "\t\n", "\u00a0", "\u2028",
        "\u2029", "\u3000", "\u0085", "\u180e", "\u200b", "\v", "\f", "\u1680", "\u2003", "\u202f", "\u205f",
        "\x1c", " \u00a0", "\u3000\n", "\n \n"};
    static const std::vector<std::string> kSymbols = {
        "!", "?", "...", ",", ";", ":", "-", "--", "_", "(", ")", "[]", "{", "}", "\"", "`", "~", "@", "#", "$",
        "%", "^", "&", "*", "/", "\\", "|", "<", ">", "+", "=", "\u2014", "\u00ab", "\u300c", "\u3002", "\u20ac",
        "\U0001F600", "\U0001F44D\U0001F3FD", "\U0001F468\u200D\U0001F469\u200D\U0001F467", "\u263A\uFE0F",
        "1\uFE0F\u20E3", "\U0001F1EB\U0001F1F7", "\u0301", "\u0300\u0316"};
    static const std::vector<std::string> kNumbers = {"\u00bd", "\u00b2", "\u0661\u0662", "\u096a", "\u2167",
                                                      "\U0001D7D8", "\u3007", "\u2460"};
    switch (Uniform(0, 13)) {
      case 0:
      case 1:
        AppendRange('a', 'z', 1, 9, out);
        break;
      case 2:
        AppendRange('A', 'Z', 1, 4, out);
        break;
      case 3:
        AppendRange('0', '9', 1, 8, out);
        break;
      case 4:
        *out += Pick(kContractions);
        break;
      case 5:
        *out += Pick(kSpaces);
        break;
      case 6:
        *out += Pick(kSymbols);
        break;
      case 7:
        *out += Pick(kNumbers);
        break;
      case 8:  // CJK, kana, Hangul
        switch (Uniform(0, 2)) {
          case 0: AppendRange(0x4E00, 0x9FFF, 1, 4, out); break;
          case 1: AppendRange(0x3041, 0x30FF, 1, 4, out); break;
          default: AppendRange(0xAC00, 0xD7A3, 1, 4, out); break;
        }
        break;
      case 9:  // Cyrillic, Greek, Arabic, Devanagari (with its marks), Thai
        switch (Uniform(0, 4)) {
          case 0: AppendRange(0x0410, 0x044F, 1, 6, out); break;
          case 1: AppendRange(0x0391, 0x03C9, 1, 6, out); break;
          case 2: AppendRange(0x0620, 0x064A, 1, 6, out); break;
          case 3: AppendRange(0x0900, 0x097F, 1, 6, out); break;
          default: AppendRange(0x0E01, 0x0E5B, 1, 6, out); break;
        }
        break;
      case 10:  // a letter with combining marks
        AppendRange('a', 'z', 1, 1, out);
        AppendRange(0x0300, 0x036F, 1, 3, out);
        break;
      case 11:
        AppendRange(0x1F300, 0x1F64F, 1, 3, out);
        break;
      default:  // anything PCRE2 and the tables agree on: unassigned, private use, controls, ...
        for (int n = Uniform(1, 4); n > 0; --n) AppendUtf8(Pick(pool_), out);
        break;
    }
  }

  std::mt19937 rng_{20261130};
  std::vector<uint32_t> pool_;
};

struct NamedPattern {
  const char* name;
  std::string_view pattern;
};

const NamedPattern kPatterns[] = {
    {"GPT-2", lowbit::kGpt2Pattern},
    {"Llama-3", lowbit::kLlama3Pattern},
    {"Qwen2", lowbit::kQwen2Pattern},
    {"Digits", lowbit::kNumberPattern},
};

std::string Show(std::string_view text, const Matches& matches, size_t at) {
  std::string out;
  for (size_t i = at; i < matches.size() && i < at + 4; ++i) {
    const auto& [begin, end] = matches[i];
    out += nlohmann::json(std::string(text.substr(begin, end - begin))).dump() + " ";
  }
  return out;
}

void CheckPattern(const NamedPattern& named, const std::vector<std::string>& corpus, lowbit::test::Checks* checks) {
  const auto built_in = lowbit::BuiltInSplitPattern(named.pattern);
  const auto pcre2 = lowbit::Pcre2SplitPattern(std::string(named.pattern));
  size_t differing = 0;
  for (const std::string& doc : corpus) {
    Matches ours, theirs;
    built_in->FindAll(doc, &ours);
    pcre2->FindAll(doc, &theirs);
    if (ours == theirs) continue;
    if (++differing <= 3) {
      size_t at = 0;
      while (at < ours.size() && at < theirs.size() && ours[at] == theirs[at]) ++at;
      std::fprintf(stderr, "%s differs in %s\n  built-in: %s\n  PCRE2:    %s\n", named.name,
                   nlohmann::json(doc).dump().c_str(), Show(doc, ours, at).c_str(), Show(doc, theirs, at).c_str());
    }
  }
  checks->Expect(differing == 0, std::string(named.name) + ": " + std::to_string(differing) + " of " +
                                     std::to_string(corpus.size()) + " documents split unlike PCRE2");
}

// MB/s of `pattern` over `corpus`, best of three passes.
double Throughput(const SplitPattern& pattern, const std::vector<std::string>& corpus) {
  size_t bytes = 0;
  for (const std::string& doc : corpus) bytes += doc.size();
  double best = 1e9;
  Matches matches;
  for (int pass = 0; pass < 3; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    for (const std::string& doc : corpus) {
      matches.clear();
      pattern.FindAll(doc, &matches);
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return bytes / best / 1e6;
}

// Text like prose: ASCII words, punctuation and line breaks.
std::vector<std::string> ProseCorpus(size_t documents) {
  std::mt19937 rng(7);
  const auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<std::string> corpus(documents);
  for (std::string& doc : corpus) {
    for (int word = uniform(50, 300); word > 0; --word) {
      for (int n = uniform(1, 9); n > 0; --n) doc += static_cast<char>(uniform('a', 'z'));
      const int after = uniform(0, 19);
      doc += after == 0 ? ". " : after == 1 ? ", " : after == 2 ? "'s " : after == 3 ? "\n\n" : " ";
    }
  }
  return corpus;
}

}  // namespace

int main() {
  lowbit::test::Checks checks("split_pattern");
  return lowbit::test::Guarded(checks, [&] {
    const Pcre2Classes pcre2;
    CorpusGenerator generator(CheckClasses(pcre2, &checks));
    std::vector<std::string> corpus(20000);
    for (std::string& doc : corpus) doc = generator.Document();
    for (const NamedPattern& named : kPatterns) CheckPattern(named, corpus, &checks);

    const std::vector<std::string> prose = ProseCorpus(2000);
    for (const NamedPattern& named : kPatterns) {
      const auto built_in = lowbit::BuiltInSplitPattern(named.pattern);
      const auto pcre2_pattern = lowbit::Pcre2SplitPattern(std::string(named.pattern));
      std::printf("timing %s: built-in %.0f MB/s, PCRE2-JIT %.0f MB/s (generated mixed text); built-in %.0f MB/s, "
                  "PCRE2-JIT %.0f MB/s (prose)\n",
                  named.name, Throughput(*built_in, corpus), Throughput(*pcre2_pattern, corpus),
                  Throughput(*built_in, prose), Throughput(*pcre2_pattern, prose));
    }
    return checks.Finish();
  });
}
