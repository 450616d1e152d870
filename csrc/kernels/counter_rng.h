// Counter-based random numbers for the bucket op: every draw is a pure function of
// (seed, stream, counter), with no state carried from one draw to the next. So the CPU op, the
// CUDA op and the Python reference (pbg_fast/model/reference.py, same names) draw the same
// negatives and the same shuffle whatever thread, block or batch order computes them, and a
// bucket can be compared batch by batch across all three.
//
//   draw(key, i)        SplitMix64 read at position i: mix64(key + (i + 1) * gamma). SplitMix64
//                       is this counter read in order (Steele, Lea & Flood, OOPSLA 2014).
//   stream_key(s, p, j) the key of stream j of purpose p under seed s (purposes below).
//   below(u, n)         u scaled into [0, n) by the high half of u * n (Lemire): no division.
//   Shuffle             a keyed permutation of [0, E): a 4-round Feistel network on the
//                       smallest even-bit power of two >= E, cycle-walked back into [0, E).
//                       Position i's edge is computed on its own, in O(1) expected.
//
// Torch-free and CUDA-clean (PBG_HD): included by csrc/cpu and csrc/cuda alike.
#pragma once

#include "common.h"

namespace pbg {
namespace rng {

constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL;

// What a stream is for; the values are part of the contract with the Python reference.
enum Purpose : uint64_t { kShuffle = 1, kLhsNegatives = 2, kRhsNegatives = 3 };

PBG_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

PBG_HD uint64_t draw(uint64_t key, uint64_t counter) { return mix64(key + (counter + 1) * kGamma); }

PBG_HD uint64_t stream_key(uint64_t seed, uint64_t purpose, uint64_t index) {
  return mix64(mix64(seed ^ (purpose * kGamma)) + (index + 1) * kGamma);
}

PBG_HD int64_t below(uint64_t u, int64_t n) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__umul64hi(u, static_cast<uint64_t>(n)));
#else
  return static_cast<int64_t>((static_cast<unsigned __int128>(u) * static_cast<uint64_t>(n)) >> 64);
#endif
}

// A keyed permutation of [0, n).
struct Shuffle {
  uint64_t key;
  uint64_t n;
  int half;       // bits per Feistel half
  uint64_t mask;  // (1 << half) - 1

  PBG_HD Shuffle(uint64_t seed, uint64_t n_) : key(stream_key(seed, kShuffle, 0)), n(n_) {
    int bits = 2;
    while (bits < 64 && (uint64_t(1) << bits) < n) bits += 2;
    half = bits / 2;
    mask = (uint64_t(1) << half) - 1;
  }

  PBG_HD uint64_t encrypt(uint64_t x) const {
    uint64_t l = x >> half, r = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = draw(key, (round << 32) | r) & mask;
      const uint64_t t = l ^ f;
      l = r;
      r = t;
    }
    return (l << half) | r;
  }

  // The index at position i of the shuffled order (i < n).
  PBG_HD uint64_t operator()(uint64_t i) const {
    uint64_t x = encrypt(i);
    while (x >= n) x = encrypt(x);  // the cycle through [n, 2^bits) always comes back
    return x;
  }
};

}  // namespace rng
}  // namespace pbg
