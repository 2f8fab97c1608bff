// Byte-level BPE tokenizer that reads a Hugging Face `tokenizer.json` and gives the same ids and
// text as HF `tokenizers` (the Python/Rust library) for the components it implements:
//
//   model           BPE (merges as "a b" strings or ["a", "b"] pairs; ignore_merges; byte_fallback;
//                   unk_token / fuse_unk)
//   added tokens    split out of the input first (longest match first), with lstrip, rstrip,
//                   single_word and normalized honoured
//   normalizer      NFC, null, or a Sequence of these
//   pre_tokenizer   ByteLevel (add_prefix_space, use_regex), Split (Regex or String pattern, every
//                   behavior, invert), Digits (individual_digits), Sequence of these, null
//   post_processor  TemplateProcessing (single), ByteLevel, Sequence of these, null
//   decoder         ByteLevel
//
// Anything else in the file (another normalizer, a WordPiece model, truncation, ...) makes
// FromFile throw std::runtime_error with a one-line message naming the component: the tokenizer
// refuses rather than tokenizing differently from HF.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lowbit {

class Tokenizer {
 public:
  // Loads `tokenizer.json`; throws std::runtime_error (one line) on an unreadable or unsupported file.
  static Tokenizer FromFile(const std::string& tokenizer_json_path);
  // Same, from the JSON text itself.
  static Tokenizer FromJson(const std::string& tokenizer_json_text);

  // The ids HF `Tokenizer.encode(text, add_special_tokens=...).ids` gives. Invalid UTF-8 in `text`
  // is first replaced by U+FFFD, as Python's `bytes.decode("utf-8", "replace")` would.
  // Thread-safe (the BPE cache is shared behind a mutex).
  std::vector<int32_t> Encode(const std::string& text, bool add_special_tokens = true) const;

  // The text HF `Tokenizer.decode(ids, skip_special_tokens=...)` gives: token bytes concatenated,
  // invalid UTF-8 replaced by U+FFFD (one per maximal ill-formed subsequence). Ids that name no
  // token are skipped, as HF skips them.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens = true) const;

  // The raw bytes the decoder turns token `id` into (possibly part of a UTF-8 character); empty
  // for an id that names no token.
  const std::string& TokenBytes(int32_t id) const;

  // Id of a token string (added tokens first, then the model vocabulary); -1 if none.
  int32_t TokenToId(const std::string& token) const;
  // Token string of an id (added tokens first, then the model vocabulary); "" if none.
  std::string IdToToken(int32_t id) const;
  // One past the largest id of the vocabulary and the added tokens.
  size_t VocabSize() const;
  // Whether `id` is a special added token (the ones Decode skips when asked).
  bool IsSpecial(int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;  // shared: copies of a Tokenizer are cheap and share the cache
};

// Turns generated ids into text deltas, one token at a time, never splitting a UTF-8 character:
// bytes of an incomplete multi-byte sequence are held back until the sequence completes (or is
// known to be invalid). The concatenation of every Push delta and Flush equals
// Decode(all ids, skip_special_tokens), and each delta is valid UTF-8.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);

  // The text that token completes (often empty while a multi-byte character is pending).
  std::string Push(int32_t token);
  // The held-back bytes, each incomplete sequence as U+FFFD; the decoder is then empty.
  std::string Flush();

 private:
  Tokenizer tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // bytes of a not yet complete UTF-8 sequence (at most 3)
};

}  // namespace lowbit
