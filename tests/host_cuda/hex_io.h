// Reading and writing floats as hex bit patterns, the exact form the host kernel programs and their
// Rust tests exchange (tests/dp_step.rs).
#pragma once
#include <cstdio>
#include <cstring>
#include <vector>

static bool read_float(float* out) {
  unsigned b;
  if (std::scanf("%x", &b) != 1) return false;
  std::memcpy(out, &b, 4);
  return true;
}

static void print_floats(const std::vector<float>& xs) {
  for (float v : xs) {
    unsigned b;
    std::memcpy(&b, &v, 4);
    std::printf("%08x\n", b);
  }
}
