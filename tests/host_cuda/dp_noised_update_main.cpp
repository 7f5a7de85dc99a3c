// Runs kernels/dp.cu's noised SGD and Adam updates on the host, one element per one-thread block.
// Reads from stdin (hex bit patterns for every float): n std divisor, key[8] tensor_index step_lo
// step_hi, sgd lr weight_decay, adam beta1 beta2 eps weight_decay step_size bias2_sqrt, then n
// values each of sum, param, m, v. Prints, for Philox then ChaCha20: SGD's param (n lines) and
// flag, then Adam's param, m, v (n lines each) and flag. With `memory` as its argument, the step,
// lr and bias corrections come from memory (step_values.h).
#include <cstdio>
#include <cstring>
#include <vector>

#include "dp.cu"
#include "hex_io.h"
#include "step_values.h"

int main(int argc, char** argv) {
  long long n;
  NoiseDivideParams noise = {};
  if (std::scanf("%lld", &n) != 1 || !read_float(&noise.std) || !read_float(&noise.divisor)) return 2;
  noise.n = n;
  for (int i = 0; i < 8; ++i)
    if (std::scanf("%x", &noise.key.key[i]) != 1) return 2;
  if (std::scanf("%x %x %x", &noise.key.tensor_index, &noise.key.step_lo, &noise.key.step_hi) != 3) return 2;
  NoisedSgdParams sgd = {};
  sgd.noise = noise;
  sgd.sgd.n = n;
  if (!read_float(&sgd.sgd.lr) || !read_float(&sgd.sgd.weight_decay)) return 2;
  NoisedAdamParams adam = {};
  adam.noise = noise;
  adam.adam.n = n;
  if (!read_float(&adam.adam.beta1) || !read_float(&adam.adam.beta2) || !read_float(&adam.adam.eps) ||
      !read_float(&adam.adam.weight_decay) || !read_float(&adam.adam.step_size) || !read_float(&adam.adam.bias2_sqrt))
    return 2;
  uint32_t step_words[2];
  float lr_word, correction_words[2];
  if (values_from_memory(argc, argv)) {
    step_from_memory(sgd.noise.key, step_words);
    adam.noise.key = sgd.noise.key;
    lr_from_memory(sgd.sgd, &lr_word);
    corrections_from_memory(adam.adam, correction_words);
  }
  std::vector<float> sum(n), param(n), m(n), v(n);
  for (auto* xs : {&sum, &param, &m, &v})
    for (auto& x : *xs)
      if (!read_float(&x)) return 2;
  for (int gen = 0; gen < 2; ++gen) {
    std::vector<float> p(param);
    float flag = 0.0f;
    // One more block than elements: the bounds check must leave the tail alone.
    for (long long i = 0; i <= n; ++i) {
      blockIdx.x = (unsigned)i;
      if (gen == 0) dp_noised_sgd_update_philox_f32(sgd, p.data(), sum.data(), &flag);
      else dp_noised_sgd_update_chacha_f32(sgd, p.data(), sum.data(), &flag);
    }
    print_floats(p);
    print_floats({flag});
    std::vector<float> pa(param), ma(m), va(v);
    flag = 0.0f;
    for (long long i = 0; i <= n; ++i) {
      blockIdx.x = (unsigned)i;
      if (gen == 0) dp_noised_adam_update_philox_f32(adam, pa.data(), sum.data(), ma.data(), va.data(), &flag);
      else dp_noised_adam_update_chacha_f32(adam, pa.data(), sum.data(), ma.data(), va.data(), &flag);
    }
    print_floats(pa);
    print_floats(ma);
    print_floats(va);
    print_floats({flag});
  }
  return 0;
}
