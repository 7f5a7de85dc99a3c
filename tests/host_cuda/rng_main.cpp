// Prints the f32 bits of standard_normal_at<PHILOX> and <CHACHA> for elements 0..n of the key given
// on the command line, uniform_class_at of row e for 10 and 7 classes, and the f32 bits of
// uniform_unit_at of element e: key[8] tensor_index step_lo step_hi n (hex words, decimal n).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "rng.cuh"

int main(int argc, char** argv) {
  if (argc != 13) return 2;
  NoiseKeyParams k = {};
  for (int i = 0; i < 8; ++i) k.key[i] = (uint32_t)std::strtoul(argv[1 + i], nullptr, 16);
  k.tensor_index = (uint32_t)std::strtoul(argv[9], nullptr, 16);
  k.step_lo = (uint32_t)std::strtoul(argv[10], nullptr, 16);
  k.step_hi = (uint32_t)std::strtoul(argv[11], nullptr, 16);
  const unsigned long long n = std::strtoull(argv[12], nullptr, 10);
  for (unsigned long long e = 0; e < n; ++e) {
    const float a = dpgan::standard_normal_at<dpgan::NOISE_PHILOX>(k, e);
    const float b = dpgan::standard_normal_at<dpgan::NOISE_CHACHA>(k, e);
    const float u = dpgan::uniform_unit_at(k, e);
    uint32_t ua, ub, uu;
    std::memcpy(&ua, &a, 4);
    std::memcpy(&ub, &b, 4);
    std::memcpy(&uu, &u, 4);
    std::printf("%08x %08x %x %x %08x\n", ua, ub, dpgan::uniform_class_at(k, e, 10), dpgan::uniform_class_at(k, e, 7), uu);
  }
  return 0;
}
