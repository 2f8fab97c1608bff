// Next-token sampling with the parameters and semantics of runtime/sampler.py: logit_bias, then
// OpenAI's presence/frequency penalties over this sampler's own picks, HF's repetition penalty over
// the whole context, then greedy argmax or temperature → top-k (ties kept) → top-p → an inverse-CDF
// draw. The generator is NumPy's default_rng (PCG64 seeded through SeedSequence), so a seeded
// request draws the same uniforms here as in Python.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <utility>
#include <vector>

namespace lowbit {

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;
  int64_t top_k = 0;  // 0: off
  double repetition_penalty = 1.0;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  std::vector<std::pair<int32_t, double>> logit_bias;
  std::optional<uint64_t> seed;

  /*! \brief Throws an Error naming the first field out of range (the ranges of sampler.py). */
  void Validate(int64_t vocab_size) const;
};

/*! \brief NumPy's PCG64 bit generator (XSL-RR 128/64) seeded as `np.random.default_rng(seed)`. */
class Pcg64 {
 public:
  explicit Pcg64(uint64_t seed);
  uint64_t NextU64();
  /*! \brief A double in [0, 1), as `Generator.random()`. */
  double NextDouble() { return static_cast<double>(NextU64() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  unsigned __int128 state_ = 0, inc_ = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);

  /*! \brief The logits after bias, penalties and repetition penalty (`history`: the context). */
  std::vector<float> Adjusted(const std::vector<float>& logits, const std::vector<int32_t>& history) const;
  /*! \brief Sample the next token and count it for the penalties. */
  int32_t Sample(const std::vector<float>& logits, const std::vector<int32_t>& history);
  /*! \brief The distribution a non-greedy draw samples from (sums to 1). */
  std::vector<double> Probabilities(const std::vector<float>& adjusted) const;
  /*! \brief The token an inverse-CDF draw with uniform `u` picks from `adjusted` logits. */
  int32_t Pick(const std::vector<float>& adjusted, double u) const;

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  Pcg64 rng_;
  std::map<int32_t, int64_t> counts_;  // token → times this sampler picked it
};

}  // namespace lowbit
