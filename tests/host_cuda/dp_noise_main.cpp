// Runs kernels/dp.cu's noise-and-divide pass on the host, one element per one-thread block. Reads
// from stdin: n std_bits divisor_bits, key[8] tensor_index step_lo step_hi (hex), then n f32 bit
// patterns (hex); prints the result's bit patterns, one per line, Philox then ChaCha20. With
// `memory` as its argument, the step comes from memory (step_values.h).
#include <cstdio>
#include <cstring>
#include <vector>

#include "dp.cu"
#include "step_values.h"

int main(int argc, char** argv) {
  NoiseDivideParams p = {};
  unsigned std_bits, divisor_bits;
  long long n;
  if (std::scanf("%lld %x %x", &n, &std_bits, &divisor_bits) != 3) return 2;
  p.n = n;
  std::memcpy(&p.std, &std_bits, 4);
  std::memcpy(&p.divisor, &divisor_bits, 4);
  for (int i = 0; i < 8; ++i)
    if (std::scanf("%x", &p.key.key[i]) != 1) return 2;
  if (std::scanf("%x %x %x", &p.key.tensor_index, &p.key.step_lo, &p.key.step_hi) != 3) return 2;
  uint32_t step_words[2];
  if (values_from_memory(argc, argv)) step_from_memory(p.key, step_words);
  std::vector<float> x(n);
  for (auto& v : x) {
    unsigned b;
    if (std::scanf("%x", &b) != 1) return 2;
    std::memcpy(&v, &b, 4);
  }
  for (int gen = 0; gen < 2; ++gen) {
    std::vector<float> out(x);
    // One more block than elements: the bounds check must leave the tail alone.
    for (long long i = 0; i <= n; ++i) {
      blockIdx.x = (unsigned)i;
      if (gen == 0) dp_gaussian_add_divide_philox_f32(p, out.data());
      else dp_gaussian_add_divide_chacha_f32(p, out.data());
    }
    for (float v : out) {
      unsigned b;
      std::memcpy(&b, &v, 4);
      std::printf("%08x\n", b);
    }
  }
  return 0;
}
