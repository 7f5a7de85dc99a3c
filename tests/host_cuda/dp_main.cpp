// Runs kernels/dp.cu's sanitiser block by block on the host (one thread per block). Reads from
// stdin: rows cols clip_bits std_bits exact, key[8] tensor_index step_lo step_hi (hex), then rows·cols
// f32 bit patterns (hex); prints the output's bit patterns, one per line, Philox then ChaCha20.
// With `memory` as its argument, the step comes from memory (step_values.h).
#include <cstdio>
#include <cstring>
#include <vector>

#include "dp.cu"
#include "step_values.h"

int main(int argc, char** argv) {
  SanitizeRowsParams p = {};
  unsigned clip_bits, std_bits;
  long long rows, cols;
  int exact;
  if (std::scanf("%lld %lld %x %x %d", &rows, &cols, &clip_bits, &std_bits, &exact) != 5) return 2;
  p.exact = exact;
  p.rows = rows;
  p.cols = cols;
  std::memcpy(&p.clip, &clip_bits, 4);
  std::memcpy(&p.noise_std, &std_bits, 4);
  for (int i = 0; i < 8; ++i)
    if (std::scanf("%x", &p.key.key[i]) != 1) return 2;
  if (std::scanf("%x %x %x", &p.key.tensor_index, &p.key.step_lo, &p.key.step_hi) != 3) return 2;
  uint32_t step_words[2];
  if (values_from_memory(argc, argv)) step_from_memory(p.key, step_words);
  std::vector<float> g(rows * cols), out(rows * cols);
  for (auto& v : g) {
    unsigned b;
    if (std::scanf("%x", &b) != 1) return 2;
    std::memcpy(&v, &b, 4);
  }
  for (int gen = 0; gen < 2; ++gen) {
    for (long long r = 0; r < rows; ++r) {
      blockIdx.x = (unsigned)r;
      if (gen == 0) dp_sanitize_rows_philox_f32(p, g.data(), out.data());
      else dp_sanitize_rows_chacha_f32(p, g.data(), out.data());
    }
    for (float v : out) {
      unsigned b;
      std::memcpy(&b, &v, 4);
      std::printf("%08x\n", b);
    }
  }
  return 0;
}
