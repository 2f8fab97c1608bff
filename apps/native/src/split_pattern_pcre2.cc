// Any other pre-tokenizer regex, through PCRE2 (built only with LOWBIT_HAVE_PCRE2).
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "split_pattern.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace lowbit {
namespace {

// Per-thread match buffers: pcre2_match_data and the JIT stack are not safe to share.
struct MatchScratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  MatchScratch() { pcre2_jit_stack_assign(context, nullptr, jit_stack); }
  ~MatchScratch() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_data_free(data);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
};

MatchScratch& Scratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

std::string ErrorMessage(int error) {
  PCRE2_UCHAR message[256];
  pcre2_get_error_message(error, message, sizeof(message));
  return reinterpret_cast<const char*>(message);
}

// HF compiles its patterns with Oniguruma, whose \s is Unicode White_Space; PCRE2's \s also
// takes U+180E. Spelling \s and \S as the property keeps the two engines in agreement.
std::string OnigurumaToPcre2(const std::string& pattern) {
  std::string out;
  out.reserve(pattern.size());
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      const char escaped = pattern[++i];
      if (escaped == 's') {
        out += "\\p{White_Space}";
      } else if (escaped == 'S') {
        out += "\\P{White_Space}";
      } else {
        out += '\\';
        out += escaped;
      }
    } else {
      out += pattern[i];
    }
  }
  return out;
}

class Pcre2Pattern : public SplitPattern {
 public:
  explicit Pcre2Pattern(const std::string& pattern) {
    const std::string translated = OnigurumaToPcre2(pattern);
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
    if (code == nullptr) {
      throw std::runtime_error("regex " + nlohmann::json(pattern).dump() + " does not compile with PCRE2 at offset " +
                               std::to_string(error_offset) + ": " + ErrorMessage(error));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is absent
    code_.reset(code, pcre2_code_free);
  }

  // Oniguruma's find_iter (which HF uses): an empty match right where the previous match ended
  // is skipped by retrying one character further on.
  void FindAll(std::string_view text, Matches* matches) const override {
    size_t search_from = 0;
    bool have_last = false;
    size_t last_end = 0;
    while (search_from <= text.size()) {
      size_t begin, end;
      if (!Search(text, search_from, &begin, &end)) return;
      if (begin == end && have_last && end == last_end) {
        if (search_from >= text.size()) return;
        ++search_from;
        while (search_from < text.size() && (static_cast<unsigned char>(text[search_from]) & 0xC0) == 0x80) {
          ++search_from;
        }
        continue;
      }
      matches->emplace_back(begin, end);
      search_from = end;
      last_end = end;
      have_last = true;
    }
  }

 private:
  // Whether the pattern matches at or after `start` of valid UTF-8 `text`; fills [*begin, *end).
  bool Search(std::string_view text, size_t start, size_t* begin, size_t* end) const {
    MatchScratch& scratch = Scratch();
    const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start,
                               PCRE2_NO_UTF_CHECK, scratch.data, scratch.context);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) throw std::runtime_error("tokenizer: regex match failed: " + ErrorMessage(rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.data);
    *begin = ovector[0];
    *end = ovector[1];
    return true;
  }

  std::shared_ptr<pcre2_code> code_;
};

}  // namespace

std::unique_ptr<SplitPattern> Pcre2SplitPattern(const std::string& pattern) {
  return std::make_unique<Pcre2Pattern>(pattern);
}

}  // namespace lowbit
