// Runs kernels/dp.cu's multi-tensor noised SGD and Adam updates on the host, one element per
// one-thread block, block row y for tensor y. Reads from stdin (hex bit patterns for every float):
// count, then per tensor: n std divisor key[8] tensor_index step_lo step_hi; sgd lr weight_decay;
// adam beta1 beta2 eps weight_decay step_size bias2_sqrt; then per tensor n values each of sum,
// param, m, v. Prints, for Philox then ChaCha20: SGD's params (tensor by tensor) and flag, then
// Adam's param, m, v of each tensor in turn and the flag. With `memory` as its argument, every
// tensor's step (one step shared by all, as a step block holds it), the lr and the bias
// corrections come from memory (step_values.h); the keys must then share one step.
#include <cstdio>
#include <cstring>
#include <vector>

#include "dp.cu"
#include "hex_io.h"
#include "step_values.h"

int main(int argc, char** argv) {
  int count;
  if (std::scanf("%d", &count) != 1 || count < 1 || count > DPGAN_FOREACH_TENSORS) return 2;
  std::vector<NoiseDivideParams> noise(count);
  long long largest = 0;
  for (auto& nz : noise) {
    long long n;
    if (std::scanf("%lld", &n) != 1 || !read_float(&nz.std) || !read_float(&nz.divisor)) return 2;
    nz.n = n;
    largest = n > largest ? n : largest;
    for (int i = 0; i < 8; ++i)
      if (std::scanf("%x", &nz.key.key[i]) != 1) return 2;
    if (std::scanf("%x %x %x", &nz.key.tensor_index, &nz.key.step_lo, &nz.key.step_hi) != 3) return 2;
  }
  SgdUpdateParams sgd = {};
  if (!read_float(&sgd.lr) || !read_float(&sgd.weight_decay)) return 2;
  AdamUpdateParams adam = {};
  if (!read_float(&adam.beta1) || !read_float(&adam.beta2) || !read_float(&adam.eps) || !read_float(&adam.weight_decay) ||
      !read_float(&adam.step_size) || !read_float(&adam.bias2_sqrt))
    return 2;
  uint32_t step_words[2];
  float lr_word, correction_words[2];
  if (values_from_memory(argc, argv)) {
    const uint32_t lo = noise[0].key.step_lo, hi = noise[0].key.step_hi;
    for (auto& nz : noise) {
      if (nz.key.step_lo != lo || nz.key.step_hi != hi) return 2;
      step_from_memory(nz.key, step_words);
    }
    lr_from_memory(sgd, &lr_word);
    corrections_from_memory(adam, correction_words);
  }
  std::vector<std::vector<float>> sum(count), param(count), m(count), v(count);
  for (int t = 0; t < count; ++t)
    for (auto* xs : {&sum[t], &param[t], &m[t], &v[t]}) {
      xs->resize(noise[t].n);
      for (auto& x : *xs)
        if (!read_float(&x)) return 2;
    }
  // Every block of the grid, as a launch covering the largest tensor would run it, and one more:
  // the bounds check must leave every tensor's tail alone.
  auto run_grid = [&](auto kernel) {
    for (int y = 0; y < count; ++y)
      for (long long x = 0; x <= largest; ++x) {
        blockIdx.x = (unsigned)x;
        blockIdx.y = (unsigned)y;
        kernel();
      }
  };
  for (int gen = 0; gen < 2; ++gen) {
    NoisedSgdForeachParams ps = {};
    ps.sgd = sgd;
    ps.count = count;
    std::vector<std::vector<float>> p(param);
    for (int t = 0; t < count; ++t) ps.tensors[t] = {p[t].data(), sum[t].data(), nullptr, nullptr, noise[t]};
    float flag = 0.0f;
    run_grid([&] {
      if (gen == 0) dp_noised_sgd_update_foreach_philox_f32(ps, &flag);
      else dp_noised_sgd_update_foreach_chacha_f32(ps, &flag);
    });
    for (auto& xs : p) print_floats(xs);
    print_floats({flag});

    NoisedAdamForeachParams pa = {};
    pa.adam = adam;
    pa.count = count;
    std::vector<std::vector<float>> pp(param), mm(m), vv(v);
    for (int t = 0; t < count; ++t) pa.tensors[t] = {pp[t].data(), sum[t].data(), mm[t].data(), vv[t].data(), noise[t]};
    flag = 0.0f;
    run_grid([&] {
      if (gen == 0) dp_noised_adam_update_foreach_philox_f32(pa, &flag);
      else dp_noised_adam_update_foreach_chacha_f32(pa, &flag);
    });
    for (int t = 0; t < count; ++t) {
      print_floats(pp[t]);
      print_floats(mm[t]);
      print_floats(vv[t]);
    }
    print_floats({flag});
  }
  return 0;
}
