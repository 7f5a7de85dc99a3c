// Host emulation of the optimizer and random-draw kernels (kernels/optim.cu, rng.cu) on host_cuda.h:
// each kernel launched as its launcher in src/backend/cuda/optim.rs or rng.rs launches it (grid_for's
// grid, foreach chunks of 32 tensors, public draws in chunks of 64 member keys) against the CPU
// backend's loops (src/backend/cpu/optim.rs, rng.rs). Every comparison is bit for bit: tests/optim.rs
// and tests/noise.rs demand it of the updates and the draws, and the normals, whose GPU tolerance of
// 2 ulp covers only CUDA's own log/sincos, run on the host's libm here as in the reference. Buffers
// sit between guard words, outputs start as NaN, and in-place inputs are chosen so that every element
// must move: an element skipped, or written out of range, fails.
#include <array>

#include "host_cuda.h"

#include "optim.cu"
#include "rng.cu"

// Every launcher here uses grid_for's 256 threads a block (src/backend/cuda/elementwise.rs).
constexpr unsigned BLOCK = 256;
// One multiprocessor: grid_for caps a launch at 16 blocks (4,096 threads), so the larger tensors
// below grid-stride two or three times while the emulation's thread per CUDA thread stays cheap.
constexpr unsigned MULTIPROCESSORS = 1;
constexpr size_t STRIDING = 9001;  // over two full passes of the capped grid, an odd tail

uint3_ grid_for(size_t n) {
  return {(unsigned)std::clamp<size_t>((n + BLOCK - 1) / BLOCK, 1, MULTIPROCESSORS * 16), 1, 1};
}

template <class F>
void launch(uint3_ grid, F kernel) {
  emu::launch(grid, {BLOCK, 1, 1}, kernel);
}

// Set for main's second pass: every launch passes its per-step values (lr, an EMA's decay, Adam's
// bias corrections, the noise step, the draws' keys) from memory, as a step bound to a step block does
// (src/backend/cuda/step_block.rs), with their copies in the parameters poisoned, so a kernel that
// read the parameters would fail every comparison.
bool FROM_MEMORY = false;
float lr_word, decay_word, correction_words[2];
uint32_t step_words[2];
uint32_t key_words[2 * MAX_DRAW_MEMBERS];

SgdUpdateParams launched_with(SgdUpdateParams p) {
  if (FROM_MEMORY) lr_word = p.lr, p.lr_at = &lr_word, p.lr = NAN;
  return p;
}

AdamUpdateParams launched_with(AdamUpdateParams p) {
  if (FROM_MEMORY) {
    correction_words[0] = p.step_size, correction_words[1] = p.bias2_sqrt;
    p.corrections_at = correction_words;
    p.step_size = p.bias2_sqrt = NAN;
  }
  return p;
}

EmaUpdateParams launched_with(EmaUpdateParams p) {
  if (FROM_MEMORY) decay_word = p.decay, p.decay_at = &decay_word, p.decay = NAN;
  return p;
}

EmaForeachParams launched_with(EmaForeachParams p) {
  if (FROM_MEMORY) decay_word = p.decay, p.decay_at = &decay_word, p.decay = NAN;
  return p;
}

NoiseKeyParams launched_with(NoiseKeyParams k) {
  if (FROM_MEMORY) {
    step_words[0] = k.step_lo, step_words[1] = k.step_hi;
    k.step_at = step_words;
    k.step_lo = ~k.step_lo, k.step_hi ^= 0x5a5a5a5au;
  }
  return k;
}

// n floats between guard words that no launch may touch (a zero-sized buffer points at its guard).
struct Buf {
  static constexpr size_t GUARD = 64;
  static constexpr uint32_t SENTINEL = 0x7fbadbadu;
  std::vector<float> all;
  size_t n;
  explicit Buf(const std::vector<float>& v) : all(v.size() + 2 * GUARD, __uint_as_float(SENTINEL)), n(v.size()) {
    std::copy(v.begin(), v.end(), all.begin() + GUARD);
  }
  float* data() { return all.data() + GUARD; }
  std::vector<float> values() const { return {all.begin() + GUARD, all.begin() + GUARD + n}; }
  bool guards_intact() const {
    for (size_t i = 0; i < all.size(); ++i)
      if ((i < GUARD || i >= GUARD + n) && __float_as_uint(all[i]) != SENTINEL) return false;
    return true;
  }
};

void check(const std::string& what, const Buf& got, const std::vector<float>& want) {
  emu::compare_bits(what, got.values(), want);
  if (!got.guards_intact()) {
    ++emu::failures;
    printf("FAIL %s: written outside its %zu elements\n", what.c_str(), got.n);
  }
}

// A self-check of an in-place test's inputs: every expected element differs from its input, so an
// element the kernel leaves alone cannot pass.
void expect_moved(const std::string& what, const std::vector<float>& before, const std::vector<float>& want) {
  size_t still = 0;
  for (size_t i = 0; i < want.size(); ++i) still += __float_as_uint(before[i]) == __float_as_uint(want[i]);
  if (still) {
    ++emu::failures;
    printf("FAIL %s: the inputs leave %zu of %zu elements unmoved\n", what.c_str(), still, want.size());
  }
}

std::vector<float> uniform(size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(emu::rng);
  return v;
}

// Normals pushed `lo` away from zero, sign kept: gradients that move every element they update.
std::vector<float> away(size_t n, float lo) {
  auto v = emu::randn(n);
  for (auto& x : v) x = std::copysign(lo + std::fabs(x), x);
  return v;
}

// Magnitudes from [lo, hi) with the signs of `like` (momenta that a step cannot cancel).
std::vector<float> same_sign(const std::vector<float>& like, float lo, float hi) {
  auto v = uniform(like.size(), lo, hi);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::copysign(v[i], like[i]);
  return v;
}

// ---- SGD ----

struct SgdHp {
  float lr, momentum, dampening, weight_decay;
  bool nesterov;
};

SgdUpdateParams sgd_params(const SgdHp& hp, size_t n) {
  return {(int64_t)n, hp.lr, hp.momentum, hp.dampening, hp.weight_decay, hp.nesterov, 0};
}

// optim.rs's sgd_step: the momentum kernel only with momentum (a buffer is then left alone).
void sgd_step(Buf& param, Buf& grad, Buf& buf, const SgdHp& hp) {
  const size_t n = param.n;
  if (n == 0) return;
  const SgdUpdateParams p = launched_with(sgd_params(hp, n));
  if (hp.momentum != 0.0f)
    launch(grid_for(n), [&] { optim_sgd_momentum_update_f32(p, param.data(), grad.data(), buf.data()); });
  else
    launch(grid_for(n), [&] { optim_sgd_update_f32(p, param.data(), grad.data()); });
}

// cpu/optim.rs's sgd_update in f32.
void sgd_reference(std::vector<float>& p, const std::vector<float>& grad, std::vector<float>& buf, const SgdHp& hp) {
  const float damp = 1.0f - hp.dampening;
  for (size_t i = 0; i < p.size(); ++i) {
    if (hp.momentum != 0.0f) {
      const float g = grad[i] + hp.weight_decay * p[i];
      buf[i] = hp.momentum * buf[i] + damp * g;
      const float step = hp.nesterov ? g + hp.momentum * buf[i] : buf[i];
      p[i] = p[i] - hp.lr * step;
    } else {
      p[i] = p[i] - hp.lr * (grad[i] + hp.weight_decay * p[i]);
    }
  }
}

// Inputs of one SGD tensor: |grad| ≥ 0.5 beside weight decay ≤ 0.01·|param|, buffers of its sign.
struct SgdState {
  std::vector<float> param, grad, buf;
  explicit SgdState(size_t n) : param(emu::randn(n)), grad(away(n, 0.5f)), buf(same_sign(grad, 0.0f, 0.5f)) {}
};

void test_sgd(const SgdHp& hp, size_t n) {
  SgdState s(n);
  Buf param(s.param), grad(s.grad), buf(s.buf);
  sgd_step(param, grad, buf, hp);
  auto p_want = s.param, buf_want = s.buf;
  sgd_reference(p_want, s.grad, buf_want, hp);
  char what[200];
  snprintf(what, sizeof what, "sgd lr %g momentum %g dampening %g wd %g nesterov %d n %zu", hp.lr, hp.momentum,
           hp.dampening, hp.weight_decay, hp.nesterov, n);
  expect_moved(what, s.param, p_want);
  check(std::string(what) + " param", param, p_want);
  if (hp.momentum != 0.0f) expect_moved(std::string(what) + " buffer", s.buf, buf_want);
  check(std::string(what) + " buffer", buf, buf_want);
  check(std::string(what) + " grad", grad, s.grad);
}

// ---- Adam ----

struct AdamHp {
  float lr, beta1, beta2, eps, weight_decay;
};

// The bias corrections as optim.rs's adam_bias_corrections and cpu/optim.rs's adam_update fold them,
// in f64: __builtin_powi is libgcc's __powidf2, the same square-and-multiply as Rust's powi.
std::pair<float, float> adam_bias_corrections(const AdamHp& hp, uint64_t t) {
  const int ti = (int)std::min<uint64_t>(t, INT32_MAX);
  const double bias1 = 1.0 - __builtin_powi((double)hp.beta1, ti), bias2 = 1.0 - __builtin_powi((double)hp.beta2, ti);
  return {(float)((double)hp.lr / bias1), (float)std::sqrt(bias2)};
}

AdamUpdateParams adam_params(const AdamHp& hp, uint64_t t, size_t n) {
  const auto [step_size, bias2_sqrt] = adam_bias_corrections(hp, t);
  return {(int64_t)n, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, step_size, bias2_sqrt};
}

void adam_step(Buf& param, Buf& grad, Buf& m, Buf& v, uint64_t t, const AdamHp& hp) {
  const size_t n = param.n;
  if (n == 0) return;
  const AdamUpdateParams p = launched_with(adam_params(hp, t, n));
  launch(grid_for(n), [&] { optim_adam_update_f32(p, param.data(), grad.data(), m.data(), v.data()); });
}

// cpu/optim.rs's adam_update in f32.
void adam_reference(std::vector<float>& p, const std::vector<float>& grad, std::vector<float>& m, std::vector<float>& v,
                    uint64_t t, const AdamHp& hp) {
  const auto [step_size, bias2_sqrt] = adam_bias_corrections(hp, t);
  const float b1 = hp.beta1, b2 = hp.beta2;
  for (size_t i = 0; i < p.size(); ++i) {
    const float g = grad[i] + hp.weight_decay * p[i];
    m[i] = b1 * m[i] + (1.0f - b1) * g;
    v[i] = b2 * v[i] + (1.0f - b2) * g * g;
    p[i] = p[i] - step_size * m[i] / (std::sqrt(v[i]) / bias2_sqrt + hp.eps);
  }
}

// Inputs of one Adam tensor that move every element: |grad| ≥ 1.1 above |m| (of its sign) and above
// sqrt(v), v in [0, 1).
struct AdamState {
  std::vector<float> param, grad, m, v;
  explicit AdamState(size_t n)
      : param(emu::randn(n)), grad(away(n, 1.1f)), m(same_sign(grad, 0.1f, 1.0f)), v(uniform(n, 0.0f, 1.0f)) {}
  void reference(uint64_t t, const AdamHp& hp) { adam_reference(param, grad, m, v, t, hp); }
};

void check_adam(const std::string& what, const AdamState& before, const AdamState& want, Buf& param, Buf& grad, Buf& m,
                Buf& v) {
  expect_moved(what + " param", before.param, want.param);
  expect_moved(what + " m", before.m, want.m);
  expect_moved(what + " v", before.v, want.v);
  check(what + " param", param, want.param);
  check(what + " m", m, want.m);
  check(what + " v", v, want.v);
  check(what + " grad", grad, before.grad);
}

void test_adam(const AdamHp& hp, size_t n, uint64_t t) {
  const AdamState before(n);
  AdamState want = before;
  want.reference(t, hp);
  Buf param(before.param), grad(before.grad), m(before.m), v(before.v);
  adam_step(param, grad, m, v, t, hp);
  char what[200];
  snprintf(what, sizeof what, "adam lr %g betas %g %g eps %g wd %g t %llu n %zu", hp.lr, hp.beta1, hp.beta2, hp.eps,
           hp.weight_decay, (unsigned long long)t, n);
  check_adam(what, before, want, param, grad, m, v);
}

// ---- The moving average ----

void ema_update(Buf& ema, Buf& x, float decay) {
  const size_t n = ema.n;
  if (n == 0) return;
  const EmaUpdateParams p = launched_with(EmaUpdateParams{(int64_t)n, decay, 0, nullptr});
  launch(grid_for(n), [&] { optim_ema_update_f32(p, ema.data(), x.data()); });
}

// cpu/optim.rs's ema_update in f32.
void ema_reference(std::vector<float>& ema, const std::vector<float>& x, float decay) {
  const float keep = decay, take = 1.0f - decay;
  for (size_t i = 0; i < ema.size(); ++i) ema[i] = keep * ema[i] + take * x[i];
}

// An average and a value at least 1 apart, so that every element moves.
std::pair<std::vector<float>, std::vector<float>> ema_inputs(size_t n) {
  auto ema = emu::randn(n), x = away(n, 1.0f);
  for (size_t i = 0; i < n; ++i) x[i] += ema[i];
  return {ema, x};
}

void test_ema(size_t n, float decay) {
  const auto [ema0, x0] = ema_inputs(n);
  Buf ema(ema0), x(x0);
  ema_update(ema, x, decay);
  auto want = ema0;
  ema_reference(want, x0, decay);
  const std::string what = "ema decay " + std::to_string(decay) + " n " + std::to_string(n);
  expect_moved(what, ema0, want);
  check(what, ema, want);
  check(what + " x", x, x0);
}

// ---- Multi-tensor updates: optim.rs's foreach launchers ----

uint3_ foreach_grid(size_t largest, size_t count) {
  uint3_ g = grid_for(std::max<size_t>(largest, 1));
  g.y = (unsigned)count;
  return g;
}

// Calls `launch_chunk(first, count, largest)` per chunk of FOREACH_TENSORS tensors whose largest
// has elements, as adam_steps and pairs_foreach walk `tensors.chunks_mut(FOREACH_TENSORS)`.
template <class F>
void foreach_chunks(const std::vector<size_t>& sizes, F launch_chunk) {
  for (size_t first = 0; first < sizes.size(); first += DPGAN_FOREACH_TENSORS) {
    const size_t count = std::min(sizes.size() - first, (size_t)DPGAN_FOREACH_TENSORS);
    const size_t largest = *std::max_element(sizes.begin() + first, sizes.begin() + first + count);
    if (largest > 0) launch_chunk(first, count, largest);
  }
}

struct AdamBufs {
  Buf param, grad, m, v;
};

void adam_steps(std::vector<AdamBufs>& ts, uint64_t t, const AdamHp& hp) {
  std::vector<size_t> sizes;
  for (auto& b : ts) sizes.push_back(b.param.n);
  const AdamUpdateParams hpp = launched_with(adam_params(hp, t, 0));
  foreach_chunks(sizes, [&](size_t first, size_t count, size_t largest) {
    AdamForeachParams p{hpp, {}, (int32_t)count, 0};
    for (size_t s = 0; s < count; ++s) {
      AdamBufs& b = ts[first + s];
      p.tensors[s] = {b.param.data(), b.grad.data(), b.m.data(), b.v.data(), (int64_t)b.param.n};
    }
    launch(foreach_grid(largest, count), [&] { optim_adam_update_foreach_f32(p); });
  });
}

using Slots = ForeachTensor[DPGAN_FOREACH_TENSORS];

struct PairBufs {
  Buf a, b;
};

// pairs_foreach: `a` updated in place from `b`, c and d null; `params` wraps a chunk's slots.
template <class P, class Make>
void pairs_foreach(std::vector<PairBufs>& pairs, void (*kernel)(P), Make params) {
  std::vector<size_t> sizes;
  for (auto& pr : pairs) sizes.push_back(pr.a.n);
  foreach_chunks(sizes, [&](size_t first, size_t count, size_t largest) {
    Slots tensors = {};
    for (size_t s = 0; s < count; ++s) {
      PairBufs& pr = pairs[first + s];
      tensors[s] = {pr.a.data(), pr.b.data(), nullptr, nullptr, (int64_t)pr.a.n};
    }
    const P p = params(tensors, (int32_t)count);
    launch(foreach_grid(largest, count), [&] { kernel(p); });
  });
}

void sgd_steps(std::vector<PairBufs>& pairs, const SgdHp& hp) {
  const SgdUpdateParams hpp = launched_with(sgd_params(hp, 0));
  pairs_foreach(pairs, optim_sgd_update_foreach_f32, [&](const Slots& t, int32_t count) {
    SgdForeachParams p{hpp, {}, count, 0};
    std::copy(std::begin(t), std::end(t), p.tensors);
    return p;
  });
}

void ema_updates(std::vector<PairBufs>& pairs, float decay) {
  pairs_foreach(pairs, optim_ema_update_foreach_f32, [&](const Slots& t, int32_t count) {
    EmaForeachParams p{decay, count, nullptr, {}};
    std::copy(std::begin(t), std::end(t), p.tensors);
    return launched_with(p);
  });
}

// Each tensor of a foreach update against the single-tensor reference (tests/optim.rs's
// *_steps_equal_one_step_per_tensor), zero-sized ones by their guards.
void test_foreach(const std::string& name, const std::vector<size_t>& sizes) {
  const SgdHp sgd{0.07f, 0.0f, 0.0f, 1e-3f, false};
  const AdamHp adam{1e-2f, 0.9f, 0.99f, 1e-3f, 1e-2f};
  const uint64_t t = 7;
  const float decay = 0.999f;
  std::vector<SgdState> sgd_in;
  std::vector<AdamState> adam_in;
  std::vector<std::pair<std::vector<float>, std::vector<float>>> ema_in;
  std::vector<PairBufs> sgd_bufs, ema_bufs;
  std::vector<AdamBufs> adam_bufs;
  for (size_t n : sizes) {
    sgd_in.emplace_back(n);
    sgd_bufs.push_back({Buf(sgd_in.back().param), Buf(sgd_in.back().grad)});
    adam_in.emplace_back(n);
    const AdamState& a = adam_in.back();
    adam_bufs.push_back({Buf(a.param), Buf(a.grad), Buf(a.m), Buf(a.v)});
    ema_in.push_back(ema_inputs(n));
    ema_bufs.push_back({Buf(ema_in.back().first), Buf(ema_in.back().second)});
  }
  sgd_steps(sgd_bufs, sgd);
  adam_steps(adam_bufs, t, adam);
  ema_updates(ema_bufs, decay);
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::string what = name + " tensor " + std::to_string(i) + " n " + std::to_string(sizes[i]);
    auto p = sgd_in[i].param, buf = sgd_in[i].buf;
    sgd_reference(p, sgd_in[i].grad, buf, sgd);
    expect_moved("sgd foreach " + what, sgd_in[i].param, p);
    check("sgd foreach " + what + " param", sgd_bufs[i].a, p);
    check("sgd foreach " + what + " grad", sgd_bufs[i].b, sgd_in[i].grad);
    AdamState want = adam_in[i];
    want.reference(t, adam);
    AdamBufs& ab = adam_bufs[i];
    check_adam("adam foreach " + what, adam_in[i], want, ab.param, ab.grad, ab.m, ab.v);
    auto e = ema_in[i].first;
    ema_reference(e, ema_in[i].second, decay);
    expect_moved("ema foreach " + what, ema_in[i].first, e);
    check("ema foreach " + what, ema_bufs[i].a, e);
    check("ema foreach " + what + " x", ema_bufs[i].b, ema_in[i].second);
  }
}

// ---- Gaussian noise ----

// A NoiseKey (src/dp/noise.rs): 256-bit key, step, tensor index.
struct Key {
  uint32_t key[8];
  uint64_t step;
  uint32_t tensor_index;
};

Key random_key(uint64_t step, uint32_t tensor_index) {
  Key k{{}, step, tensor_index};
  for (auto& w : k.key) w = (uint32_t)emu::rng();
  return k;
}

// params.rs's NoiseKeyParams::new.
NoiseKeyParams key_params(const Key& k) {
  NoiseKeyParams p{};
  std::copy(std::begin(k.key), std::end(k.key), p.key);
  p.tensor_index = k.tensor_index;
  p.step_lo = (uint32_t)k.step;
  p.step_hi = (uint32_t)(k.step >> 32);
  return p;
}

// rng.rs's add_gaussian_noise: the key's mode picks the kernel.
void add_gaussian_noise(Buf& x, float sigma, const Key& key, bool secure) {
  if (x.n == 0) return;
  const GaussianNoiseParams p{(int64_t)x.n, sigma, 0, launched_with(key_params(key))};
  launch(grid_for(x.n), [&] { (secure ? rng_gaussian_add_chacha_f32 : rng_gaussian_add_philox_f32)(p, x.data()); });
}

// cpu/rng.rs's add_gaussian_noise: element e's normal rounded to f32, then a product and a sum. The
// normal is rng.cuh's standard_normal_at, which tests/host_cuda/rng_main.cpp (tests/noise.rs,
// rng_cuh_compiled_for_the_host_matches_the_reference) holds bit for bit to src/dp/noise.rs's.
std::vector<float> gaussian_reference(std::vector<float> x, float sigma, const Key& key, bool secure) {
  const NoiseKeyParams k = key_params(key);
  for (size_t e = 0; e < x.size(); ++e)
    x[e] = x[e] + sigma * (secure ? dpgan::standard_normal_at<dpgan::NOISE_CHACHA>(k, e)
                                : dpgan::standard_normal_at<dpgan::NOISE_PHILOX>(k, e));
  return x;
}

void test_gaussian(size_t n, bool secure) {
  // A step past 2³² and a tensor index, so that every counter word is in play.
  const Key key = random_key((1ull << 32) + 9, 4);
  const auto x0 = emu::randn(n);
  Buf x(x0);
  add_gaussian_noise(x, 0.5f, key, secure);
  const auto want = gaussian_reference(x0, 0.5f, key, secure);
  const std::string what = std::string(secure ? "chacha" : "philox") + " noise n " + std::to_string(n);
  expect_moved(what, x0, want);
  check(what, x, want);
}

// ---- Public draws ----

// Philox4x32-10 as src/dp/noise.rs writes it, independent of rng.cuh.
std::array<uint32_t, 4> philox(std::array<uint32_t, 4> c, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
    const uint64_t p0 = 0xD2511F53ull * c[0], p1 = 0xCD9E8D57ull * c[2];
    c = {(uint32_t)(p1 >> 32) ^ c[1] ^ k0, (uint32_t)p1, (uint32_t)(p0 >> 32) ^ c[3] ^ k1, (uint32_t)p0};
  }
  return c;
}

// Random123's known answers (tests/noise.rs, philox_matches_random123_known_answers).
void check_philox() {
  const std::array<uint32_t, 4> ctr[3] = {
      {0, 0, 0, 0}, {~0u, ~0u, ~0u, ~0u}, {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}};
  const uint32_t key[3][2] = {{0, 0}, {~0u, ~0u}, {0xa4093822, 0x299f31d0}};
  const std::array<uint32_t, 4> want[3] = {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
                                           {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
                                           {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
  for (int i = 0; i < 3; ++i)
    if (philox(ctr[i], key[i][0], key[i][1]) != want[i]) {
      ++emu::failures;
      printf("FAIL philox reference, known answer %d\n", i);
    }
}

std::array<uint32_t, 4> philox_block(const Key& k, uint64_t counter) {
  return philox({(uint32_t)counter, k.tensor_index, (uint32_t)k.step, (uint32_t)(k.step >> 32)}, k.key[0], k.key[1]);
}

// noise.rs's uniform_class_at and uniform_unit_at.
uint32_t class_at(const Key& k, uint64_t row, uint32_t classes) {
  const auto w = philox_block(k, row);
  const uint64_t u = ((uint64_t)w[1] << 32) | w[0];
  return (uint32_t)(((unsigned __int128)u * classes) >> 64);
}

float unit_at(const Key& k, uint64_t e) { return (float)(philox_block(k, e)[0] >> 8) * (1.0f / 16777216.0f); }

// A PublicDraw: the kind and its classes as rng.rs's public_draws matches them (Unit and Normal
// take 1).
struct Draw {
  uint32_t kind, classes;
  std::string name() const {
    if (kind == PUBLIC_DRAW_UNIT) return "unit";
    if (kind == PUBLIC_DRAW_NORMAL) return "normal";
    return std::string(kind == PUBLIC_DRAW_ONE_HOT ? "one-hot of " : "class of ") + std::to_string(classes);
  }
};

// rng.rs's public_draws: members' equal blocks, the position of keys[0], one launch per 64 members
// with their keys' words 0-1 in the parameters.
void public_draws(Buf& out, Draw draw, const std::vector<Key>& keys) {
  if (out.n == 0) return;
  const size_t per_member = out.n / keys.size();
  const NoiseKeyParams position = key_params(keys[0]);
  for (size_t first = 0; first < keys.size(); first += MAX_DRAW_MEMBERS) {
    const size_t count = std::min(keys.size() - first, (size_t)MAX_DRAW_MEMBERS);
    PublicDrawParams p{};
    p.per_member = (int64_t)per_member;
    p.first = (int32_t)first;
    p.count = (int32_t)count;
    p.kind = draw.kind;
    p.classes = draw.classes;
    p.tensor_index = position.tensor_index;
    p.step_lo = position.step_lo;
    p.step_hi = position.step_hi;
    for (size_t s = 0; s < count; ++s) p.keys[s][0] = keys[first + s].key[0], p.keys[s][1] = keys[first + s].key[1];
    if (FROM_MEMORY) {
      for (size_t s = 0; s < count; ++s) key_words[2 * s] = p.keys[s][0], key_words[2 * s + 1] = p.keys[s][1];
      p.keys_at = key_words;
      for (auto& k : p.keys) k[0] = ~k[0], k[1] = ~k[1];
    }
    launch(grid_for(count * per_member), [&] { rng_public_draws_philox_f32(p, out.data()); });
  }
}

// cpu/rng.rs's public_draws: block m of `out` from keys[m] alone. Normals come from rng.cuh's
// standard_normal_at (checked against the Rust reference by tests/host_cuda/rng_main.cpp), with the
// member's key in words 0-1: what the kernel must index is which member and element, not the
// Box–Muller it shares with the noise kernels.
std::vector<float> draws_reference(size_t n, Draw draw, const std::vector<Key>& keys) {
  std::vector<float> out(n);
  const size_t per_member = n / keys.size();
  for (size_t m = 0; m < keys.size(); ++m) {
    float* block = out.data() + m * per_member;
    for (size_t e = 0; e < per_member; ++e) {
      if (draw.kind == PUBLIC_DRAW_ONE_HOT)
        block[e] = class_at(keys[m], e / draw.classes, draw.classes) == e % draw.classes ? 1.0f : 0.0f;
      else if (draw.kind == PUBLIC_DRAW_CLASS)
        block[e] = (float)class_at(keys[m], e, draw.classes);
      else if (draw.kind == PUBLIC_DRAW_UNIT)
        block[e] = unit_at(keys[m], e);
      else
        block[e] = dpgan::standard_normal_at<dpgan::NOISE_PHILOX>(key_params(keys[m]), e);
    }
  }
  return out;
}

// What a draw's values must be whatever the generator gives: one-hot rows with exactly one 1 and
// zeros elsewhere, classes integers below `classes`, uniforms multiples of 2⁻²⁴ in [0, 1), normals
// finite and within Philox's reach (|z| < 8.6).
void check_draw_shape(const std::string& what, const std::vector<float>& v, Draw draw) {
  size_t bad = 0;
  if (draw.kind == PUBLIC_DRAW_ONE_HOT) {
    for (size_t r = 0; r < v.size() / draw.classes; ++r) {
      size_t ones = 0, zeros = 0;
      for (size_t c = 0; c < draw.classes; ++c) {
        const uint32_t bits = __float_as_uint(v[r * draw.classes + c]);
        ones += bits == 0x3f800000u;
        zeros += bits == 0;
      }
      bad += ones != 1 || ones + zeros != draw.classes;
    }
  } else if (draw.kind == PUBLIC_DRAW_NORMAL) {
    for (float x : v) bad += !(std::fabs(x) < 8.6f);
  } else {
    const float top = draw.kind == PUBLIC_DRAW_CLASS ? (float)draw.classes : 1.0f;
    const float grain = draw.kind == PUBLIC_DRAW_CLASS ? 1.0f : 16777216.0f;
    for (float x : v) bad += !(x >= 0.0f && x < top && std::floor(x * grain) == x * grain);
  }
  if (bad) {
    ++emu::failures;
    printf("FAIL %s: %zu malformed %s\n", what.c_str(), bad, draw.kind == PUBLIC_DRAW_ONE_HOT ? "rows" : "values");
  }
}

// `members` members drawing `per_member` values each (one-hot: rows × classes); the blocks of the
// members at each chunk's edges also equal a one-member launch with their key (tests/noise.rs,
// public_draws_give_each_member_what_its_key_draws_alone).
void test_public_draws(size_t members, Draw draw, size_t per_member) {
  // The keys share a step past 2³² and a tensor index; their words differ, 2-7 unused by Philox.
  std::vector<Key> keys;
  for (size_t m = 0; m < members; ++m) keys.push_back(random_key((1ull << 32) + 6, 3));
  const size_t n = members * per_member;
  Buf out(std::vector<float>(n, NAN));
  public_draws(out, draw, keys);
  const std::string what = "public draws " + draw.name() + ", " + std::to_string(members) + " members of " +
                           std::to_string(per_member);
  check(what, out, draws_reference(n, draw, keys));
  const auto got = out.values();
  check_draw_shape(what, got, draw);
  for (size_t m = 0; m < members; ++m) {
    if (m % MAX_DRAW_MEMBERS > 1 && (m + 2) % MAX_DRAW_MEMBERS > 1 && m + 1 != members) continue;
    Buf one(std::vector<float>(per_member, NAN));
    public_draws(one, draw, {keys[m]});
    check(what + ", member " + std::to_string(m) + " alone",
          one, {got.begin() + m * per_member, got.begin() + (m + 1) * per_member});
  }
}

int main() {
  for (bool from_memory : {false, true}) {
    FROM_MEMORY = from_memory;
    printf("per-step values from the %s\n", from_memory ? "memory" : "parameters");
    const SgdHp sgds[] = {
        {0.1f, 0.0f, 0.0f, 0.0f, false},   {0.05f, 0.0f, 0.0f, 1e-2f, false}, {0.05f, 0.9f, 0.0f, 0.0f, false},
        {0.02f, 0.9f, 0.1f, 5e-3f, false}, {0.02f, 0.9f, 0.0f, 1e-2f, true},  {0.01f, 0.5f, 0.0f, 0.0f, true},
    };
    for (const SgdHp& hp : sgds)
      for (size_t n : {(size_t)1, (size_t)257, STRIDING}) test_sgd(hp, n);
    // tests/optim.rs's configurations; t = 1, mid-run, and far past i32's range (corrections of 1).
    const AdamHp adams[] = {
        {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f},
        {2e-4f, 0.5f, 0.999f, 1e-8f, 0.0f},
        {1e-2f, 0.9f, 0.99f, 1e-3f, 1e-2f},
        {1e-4f, 0.0f, 0.9f, 1e-8f, 0.0f},
    };
    const uint64_t ts[] = {1, 1000, 1ull << 40};
    const size_t sizes[] = {1, 257, STRIDING};
    for (int c = 0; c < 4; ++c)
      for (int s = 0; s < 3; ++s) test_adam(adams[c], sizes[s], ts[(c + s) % 3]);
    test_ema(1, 0.999f);
    test_ema(255, 0.5f);
    test_ema(257, 0.0f);
    test_ema(STRIDING, 0.123f);
    printf("single-tensor updates done, %d failures\n", emu::failures);

    // Two chunks (32 + 8) of very different sizes with empty tensors among them; one grid-striding
    // tensor beside an empty and a tiny one; 33 tensors whose second chunk holds only an empty one
    // (not launched).
    const size_t mix[] = {0, 1, 255, 256, 257, 600, 33, 2, 75, 511};
    std::vector<size_t> forty, thirty_three;
    for (int i = 0; i < 40; ++i) forty.push_back(mix[(i * 7) % 10]);
    for (int i = 0; i < 32; ++i) thirty_three.push_back(1 + (size_t)i * 7);
    thirty_three.push_back(0);
    test_foreach("40 tensors", forty);
    test_foreach("striding", {STRIDING, 0, 5});
    test_foreach("33 tensors", thirty_three);
    printf("foreach updates done, %d failures\n", emu::failures);

    for (bool secure : {false, true})
      for (size_t n : {(size_t)1, (size_t)2, (size_t)3, (size_t)257, STRIDING}) test_gaussian(n, secure);
    printf("gaussian noise done, %d failures\n", emu::failures);

    check_philox();
    // Members one, a few, exactly one chunk, one past, two chunks and a tail; one-hot and unit blocks
    // of 70 make a 64-member chunk grid-stride (4,480 > 4,096 threads).
    const std::pair<Draw, size_t> draws[] = {
        {{PUBLIC_DRAW_ONE_HOT, 10}, 7 * 10}, {{PUBLIC_DRAW_ONE_HOT, 1}, 3},  {{PUBLIC_DRAW_CLASS, 2}, 33},
        {{PUBLIC_DRAW_CLASS, 7}, 13},        {{PUBLIC_DRAW_UNIT, 1}, 70},    {{PUBLIC_DRAW_NORMAL, 1}, 35},
    };
    for (size_t members : {1, 3, 64, 65, 130})
      for (const auto& [draw, per_member] : draws) test_public_draws(members, draw, per_member);
    printf("public draws done, %d failures\n", emu::failures);
  }
  return emu::finish("optim_rng");
}
