#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>

#include "error.h"

namespace lowbit {
namespace {

// NumPy's SeedSequence (numpy/random/bit_generator.pyx): hash the seed's 32-bit words into a
// pool of 4, then draw the generator's state words from the pool.
constexpr uint32_t kInitA = 0x43b0d7e5, kMultA = 0x931e8875, kInitB = 0x8b51f9dd, kMultB = 0x58f38ded;
constexpr uint32_t kMixMultL = 0xca01f9dd, kMixMultR = 0x4973f715;
constexpr int kPoolSize = 4;

uint32_t HashMix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> 16;
  return value;
}

uint32_t Mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  return result ^ (result >> 16);
}

std::vector<uint32_t> SeedWords(uint64_t seed) {
  std::vector<uint32_t> words;
  do {
    words.push_back(static_cast<uint32_t>(seed));
    seed >>= 32;
  } while (seed);
  return words;
}

std::vector<uint64_t> SeedSequenceState(uint64_t seed, int n_words64) {
  std::vector<uint32_t> entropy = SeedWords(seed);
  uint32_t pool[kPoolSize];
  uint32_t hash_const = kInitA;
  for (int i = 0; i < kPoolSize; ++i)
    pool[i] = HashMix(i < static_cast<int>(entropy.size()) ? entropy[i] : 0, hash_const);
  for (int src = 0; src < kPoolSize; ++src)
    for (int dst = 0; dst < kPoolSize; ++dst)
      if (src != dst) pool[dst] = Mix(pool[dst], HashMix(pool[src], hash_const));
  for (size_t src = kPoolSize; src < entropy.size(); ++src)
    for (int dst = 0; dst < kPoolSize; ++dst) pool[dst] = Mix(pool[dst], HashMix(entropy[src], hash_const));

  std::vector<uint32_t> words(2 * n_words64);
  uint32_t hash_b = kInitB;
  for (size_t i = 0; i < words.size(); ++i) {
    uint32_t v = pool[i % kPoolSize] ^ hash_b;
    hash_b *= kMultB;
    v *= hash_b;
    words[i] = v ^ (v >> 16);
  }
  std::vector<uint64_t> out(n_words64);
  for (int i = 0; i < n_words64; ++i) out[i] = uint64_t(words[2 * i]) | uint64_t(words[2 * i + 1]) << 32;
  return out;
}

constexpr unsigned __int128 kPcgMultiplier =
    (static_cast<unsigned __int128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;

}  // namespace

Pcg64::Pcg64(uint64_t seed) {
  std::vector<uint64_t> s = SeedSequenceState(seed, 4);
  unsigned __int128 initstate = (static_cast<unsigned __int128>(s[0]) << 64) | s[1];
  unsigned __int128 initseq = (static_cast<unsigned __int128>(s[2]) << 64) | s[3];
  inc_ = (initseq << 1) | 1;
  state_ = 0;
  state_ = state_ * kPcgMultiplier + inc_;
  state_ += initstate;
  state_ = state_ * kPcgMultiplier + inc_;
}

uint64_t Pcg64::NextU64() {
  state_ = state_ * kPcgMultiplier + inc_;
  uint64_t folded = static_cast<uint64_t>(state_ >> 64) ^ static_cast<uint64_t>(state_);
  unsigned rot = static_cast<unsigned>(state_ >> 122);
  return (folded >> rot) | (folded << ((64 - rot) & 63));
}

void SamplingParams::Validate(int64_t vocab_size) const {
  auto fail = [](const std::string& m) { throw Error(m); };
  if (!(temperature >= 0)) fail("temperature must be >= 0, got " + std::to_string(temperature));
  if (!(top_p > 0 && top_p <= 1)) fail("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (top_k < 0) fail("top_k must be >= 0, got " + std::to_string(top_k));
  if (!(repetition_penalty > 0)) fail("repetition_penalty must be > 0, got " + std::to_string(repetition_penalty));
  if (!(presence_penalty >= -2 && presence_penalty <= 2))
    fail("presence_penalty must be in [-2, 2], got " + std::to_string(presence_penalty));
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2))
    fail("frequency_penalty must be in [-2, 2], got " + std::to_string(frequency_penalty));
  for (const auto& [token, bias] : logit_bias) {
    if (token < 0 || token >= vocab_size)
      fail("logit_bias token " + std::to_string(token) + " is outside the vocabulary of " + std::to_string(vocab_size));
    if (!(bias >= -100 && bias <= 100)) fail("logit_bias values must be in [-100, 100]");
  }
}

static uint64_t EntropySeed() {
  std::random_device device;
  return (uint64_t(device()) << 32) | device();
}

Sampler::Sampler(SamplingParams params)
    : params_(std::move(params)), rng_(params_.seed ? *params_.seed : EntropySeed()) {}

std::vector<float> Sampler::Adjusted(const std::vector<float>& logits, const std::vector<int32_t>& history) const {
  std::vector<float> out = logits;  // float32 throughout, as NumPy computes it
  for (const auto& [token, bias] : params_.logit_bias) out[token] += static_cast<float>(bias);
  if (params_.presence_penalty != 0 || params_.frequency_penalty != 0) {
    const auto presence = static_cast<float>(params_.presence_penalty);
    const auto frequency = static_cast<float>(params_.frequency_penalty);
    for (const auto& [token, count] : counts_)
      out[token] -= frequency * static_cast<float>(count) + presence * (count > 0 ? 1.0f : 0.0f);
  }
  if (params_.repetition_penalty != 1.0) {
    const auto penalty = static_cast<float>(params_.repetition_penalty);
    std::set<int32_t> seen(history.begin(), history.end());
    for (int32_t token : seen) {
      float v = out[token];
      out[token] = v > 0 ? v / penalty : v * penalty;
    }
  }
  return out;
}

std::vector<double> Sampler::Probabilities(const std::vector<float>& adjusted) const {
  const size_t n = adjusted.size();
  std::vector<double> scaled(n);
  for (size_t i = 0; i < n; ++i) scaled[i] = static_cast<double>(adjusted[i]) / params_.temperature;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {  // keep ties with the k-th largest
    std::vector<double> sorted = scaled;
    std::nth_element(sorted.begin(), sorted.begin() + (n - params_.top_k), sorted.end());
    double kth = sorted[n - params_.top_k];
    for (double& v : scaled)
      if (!(v >= kth)) v = neg_inf;
  }
  double top = *std::max_element(scaled.begin(), scaled.end());
  std::vector<double> probs(n);
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += probs[i] = std::exp(scaled[i] - top);
  for (double& p : probs) p /= total;
  if (params_.top_p < 1.0) {  // the smallest most-probable set whose mass reaches top_p
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return probs[a] > probs[b]; });
    std::vector<bool> keep(n, false);
    double cumulative = 0;
    for (size_t rank = 0; rank < n; ++rank) {
      double p = probs[order[rank]];
      cumulative += p;
      double before = cumulative - p;  // mass of the strictly more probable tokens, as sampler.py rounds it
      if (before < params_.top_p || rank == 0) keep[order[rank]] = true;
    }
    double kept = 0;
    for (size_t i = 0; i < n; ++i) kept += probs[i] = keep[i] ? probs[i] : 0.0;
    for (double& p : probs) p /= kept;
  }
  return probs;
}

int32_t Sampler::Pick(const std::vector<float>& adjusted, double u) const {
  if (params_.temperature == 0)
    return static_cast<int32_t>(std::max_element(adjusted.begin(), adjusted.end()) - adjusted.begin());
  std::vector<double> probs = Probabilities(adjusted);
  double cumulative = 0;
  int32_t last = 0;
  for (size_t i = 0; i < probs.size(); ++i)
    if (probs[i] > 0) last = static_cast<int32_t>(i);
  for (size_t i = 0; i < probs.size(); ++i) {
    cumulative += probs[i];
    if (cumulative > u) return std::min(static_cast<int32_t>(i), last);
  }
  return last;  // rounding left the total a hair below u
}

int32_t Sampler::Sample(const std::vector<float>& logits, const std::vector<int32_t>& history) {
  std::vector<float> adjusted = Adjusted(logits, history);
  int32_t token = Pick(adjusted, params_.temperature == 0 ? 0.0 : rng_.NextDouble());
  ++counts_[token];
  return token;
}

}  // namespace lowbit
