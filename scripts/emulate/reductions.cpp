// Host emulation of the reduction kernels (kernels/reduce.cu, norm.cu) on host_cuda.h: each launch is
// planned as src/backend/cuda/reduce.rs and norm.rs plan it (sum_to's runs, kernel choice and
// split into two passes; the power iteration's batches of layers, fused or split path), on a
// 2-SM device so that the clamped grids stride more than once, into NaN-poisoned outputs, against
// f64 loops with the CPU backend's semantics (src/backend/cpu/reduce.rs, norm.rs).
#include "host_cuda.h"

#include "reduce.cu"
#include "norm.cu"

// Multiprocessors of the emulated device: the launchers clamp their grids to 16 blocks per SM.
constexpr size_t SMS = 2;

FastDivmod fdm(uint32_t d) { return emu::fast_divmod<FastDivmod>(d); }

size_t div_ceil(size_t a, size_t b) { return (a + b - 1) / b; }

std::string dims_str(const std::vector<size_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

// ---- sum_to (reduce.rs: SumToPlan, sum_to_passes) ----

// (size, x stride) runs, innermost first.
using Runs = std::vector<std::pair<size_t, size_t>>;

struct SumToPlan {
  Runs kept, summed;
  bool innermost_summed = false;
};

SumToPlan plan_of(const std::vector<size_t>& x_shape, const std::vector<size_t>& shape) {
  std::vector<std::pair<size_t, bool>> runs;  // (size, summed), outermost first
  for (size_t d = 0; d < x_shape.size(); ++d) {
    if (x_shape[d] == 1) continue;
    const bool summed = shape[d] == 1;
    if (!runs.empty() && runs.back().second == summed) runs.back().first *= x_shape[d];
    else runs.push_back({x_shape[d], summed});
  }
  SumToPlan plan;
  plan.innermost_summed = !runs.empty() && runs.back().second;
  size_t stride = 1;
  for (auto it = runs.rbegin(); it != runs.rend(); ++it) {
    (it->second ? plan.summed : plan.kept).push_back({it->first, stride});
    stride *= it->first;
  }
  return plan;
}

size_t product(const Runs& runs) {
  size_t n = 1;
  for (auto& r : runs) n *= r.first;
  return n;
}

SumToParams sum_to_params(const Runs& kept, const Runs& summed, size_t split_len, size_t splits) {
  SumToParams p{};
  p.out_count = (int32_t)product(kept);
  p.reduce_count = (int32_t)product(summed);
  p.split_len = (int32_t)split_len;
  p.splits = (int32_t)splits;
  p.kept_rank = (int32_t)kept.size();
  p.summed_rank = (int32_t)summed.size();
  for (size_t i = 0; i < kept.size(); ++i) {
    p.kept_dims[i] = fdm((uint32_t)kept[i].first);
    p.kept_strides[i] = (int64_t)kept[i].second;
  }
  for (size_t i = 0; i < summed.size(); ++i) {
    p.summed_dims[i] = fdm((uint32_t)summed[i].first);
    p.summed_strides[i] = (int64_t)summed[i].second;
  }
  return p;
}

// warp_per_output_config: 8 warps a block, at most 16 blocks per SM.
uint3_ warp_per_output_grid(size_t outputs, size_t splits) {
  return {(unsigned)std::clamp<size_t>(div_ceil(outputs, 8), 1, SMS * 16), (unsigned)splits, 1};
}

struct SumToPass {
  bool inner;  // reduce_sum*_to_inner (warp per output) or _to_outer ((32, 8) blocks)
  SumToParams params;
  uint3_ grid, block;
};

std::vector<SumToPass> sum_to_passes(const SumToPlan& plan) {
  const size_t out = product(plan.kept), terms = product(plan.summed);
  const size_t per_output = plan.innermost_summed ? 32 : 8;
  const size_t warps_unsplit = plan.innermost_summed ? out : div_ceil(out, 32) * 8;
  const size_t target = SMS * 32;
  size_t splits = 1;
  if (warps_unsplit < target)
    splits = std::clamp<size_t>(std::min(div_ceil(target, warps_unsplit), div_ceil(terms, per_output * 32)), 1, 1024);
  const size_t split_len = div_ceil(terms, splits);
  splits = div_ceil(terms, split_len);
  std::vector<SumToPass> passes;
  const SumToParams first = sum_to_params(plan.kept, plan.summed, split_len, splits);
  if (plan.innermost_summed) {
    passes.push_back({true, first, warp_per_output_grid(out, splits), {256, 1, 1}});
  } else {
    const unsigned tiles = (unsigned)std::clamp<size_t>(div_ceil(out, 32), 1, SMS * 16);
    passes.push_back({false, first, {tiles, (unsigned)splits, 1}, {32, 8, 1}});
  }
  if (splits > 1)
    passes.push_back({true, sum_to_params({{out, splits}}, {{splits, 1}}, splits, 1), warp_per_output_grid(out, 1),
                      {256, 1, 1}});
  return passes;
}

// Launches the kernel that `pass` and `s` name (y: the product's second factor).
void launch_sum_to(const SumToPass& pass, dpgan::Summand s, const float* x, const float* y, float* out) {
  const SumToParams p = pass.params;
  emu::launch(pass.grid, pass.block, [&] {
    if (pass.inner) {
      if (s == dpgan::VALUE) reduce_sum_to_inner_fwd_f32(p, x, out);
      else if (s == dpgan::SQUARE) reduce_sum_sq_to_inner_fwd_f32(p, x, out);
      else reduce_sum_prod_to_inner_fwd_f32(p, x, y, out);
    } else {
      if (s == dpgan::VALUE) reduce_sum_to_outer_fwd_f32(p, x, out);
      else if (s == dpgan::SQUARE) reduce_sum_sq_to_outer_fwd_f32(p, x, out);
      else reduce_sum_prod_to_outer_fwd_f32(p, x, y, out);
    }
  });
}

// `inner` and `split`: the kernel the first pass must take and whether a second pass follows, so
// that each case keeps covering what it is listed for.
void test_sum_to(const std::vector<size_t>& x_shape, const std::vector<size_t>& shape, bool inner, bool split) {
  size_t n = 1, out_n = 1;
  for (size_t d = 0; d < x_shape.size(); ++d) n *= x_shape[d], out_n *= shape[d];
  const auto x = emu::randn(n), y = emu::randn(n);
  const SumToPlan plan = plan_of(x_shape, shape);
  const auto passes = sum_to_passes(plan);
  const std::string what = dims_str(x_shape) + " -> " + dims_str(shape);
  if (passes[0].inner != inner || (passes.size() == 2) != split) {
    ++emu::failures;
    printf("FAIL sum_to %s: planned %s kernel, %zu pass(es); the case is listed for %s, %s\n", what.c_str(),
           passes[0].inner ? "inner" : "outer", passes.size(), inner ? "inner" : "outer", split ? "split" : "one pass");
  }
  for (dpgan::Summand s : {dpgan::VALUE, dpgan::SQUARE, dpgan::PRODUCT}) {
    // src/backend/cpu/reduce.rs's sum_map_to: every summand, in f64, added to its broadcast output.
    std::vector<double> want(out_n, 0.0);
    for (size_t i = 0; i < n; ++i) {
      size_t rest = i, o = 0, o_stride = 1;
      for (size_t d = x_shape.size(); d-- > 0;) {
        if (shape[d] != 1) o += (rest % x_shape[d]) * o_stride;
        rest /= x_shape[d];
        o_stride *= shape[d];
      }
      const double v = x[i];
      want[o] += s == dpgan::VALUE ? v : s == dpgan::SQUARE ? v * v : v * (double)y[i];
    }
    std::vector<float> got(out_n, NAN);
    if (passes.size() == 1) {
      launch_sum_to(passes[0], s, x.data(), y.data(), got.data());
    } else {
      std::vector<float> partials(out_n * passes[0].params.splits, NAN);
      launch_sum_to(passes[0], s, x.data(), y.data(), partials.data());
      launch_sum_to(passes[1], dpgan::VALUE, partials.data(), nullptr, got.data());
    }
    // tests/reduce.rs's sum*_to_cuda_matches_cpu: F32_REDUCTION, 1e-5 (there relative to Σ|terms|
    // per output; here to the sums themselves, which is stricter).
    const char* names[] = {"sum_to", "sum_squares_to", "sum_products_to"};
    emu::compare(std::string(names[s]) + " " + what, got, want, 1e-5);
  }
}

// ---- log_softmax (reduce.rs: a warp per row) ----

// Inputs as tests/reduce.rs's log_softmax_input: normal logits ×3, some rows shifted by ±200 (exp
// overflows without the max shift), now and then an entry 150 below its row (exp underflows).
void test_log_softmax(size_t rows, size_t cols) {
  const float shifts[] = {0.0f, 200.0f, -200.0f};
  auto x = emu::randn(rows * cols, 3.0f);
  std::uniform_int_distribution<size_t> shift_of(0, 2), quarter(0, 3), col_of(0, cols - 1);
  for (size_t r = 0; r < rows; ++r) {
    const float shift = shifts[shift_of(emu::rng)];
    for (size_t k = 0; k < cols; ++k) x[r * cols + k] += shift;
    if (cols > 1 && quarter(emu::rng) == 0) x[r * cols + col_of(emu::rng)] = shift - 150.0f;
  }
  // src/backend/cpu/reduce.rs's log_softmax_rows in f64.
  std::vector<double> want(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    double m = -INFINITY, sum = 0;
    for (size_t k = 0; k < cols; ++k) m = std::max(m, (double)x[r * cols + k]);
    for (size_t k = 0; k < cols; ++k) sum += std::exp(x[r * cols + k] - m);
    for (size_t k = 0; k < cols; ++k) want[r * cols + k] = x[r * cols + k] - (m + std::log(sum));
  }
  std::vector<float> y(rows * cols, NAN);
  const LogSoftmaxParams p{(int64_t)rows, (int64_t)cols};
  emu::launch(warp_per_output_grid(rows, 1), {256, 1, 1}, [&] { reduce_log_softmax_fwd_f32(p, x.data(), y.data()); });
  // tests/reduce.rs's log_softmax_cuda_matches_cpu: F32_REDUCTION.
  emu::compare("log_softmax " + std::to_string(rows) + "x" + std::to_string(cols), y, want, 1e-5);
}

// ---- The power iteration (norm.rs: power_iterations, launch_batch) ----

struct Layer {
  size_t groups, rows, cols;
  std::vector<float> w, u;
};

Layer layer(size_t groups, size_t rows, size_t cols) {
  return {groups, rows, cols, emu::randn(groups * rows * cols), emu::randn(groups * rows)};
}

struct Step {
  std::vector<float> u, v, sigma;
};

// Every layer through the launches norm.rs makes: fused when each launched layer's groups fill the
// 2-SM device (2 blocks per SM), else Wᵀu, ‖·‖ and W v, u's normalisation; 16 layers a launch.
// `in_place`: as for a spectral norm's state, u is read from a state buffer that also receives u'
// (u_state = u) and a v state receives v; both must then equal the step's own outputs bit for bit.
std::vector<Step> power_iterations(const std::vector<Layer>& layers, bool in_place = false) {
  constexpr unsigned BLOCK = 512;
  auto launched = [](const Layer& l) { return l.groups > 0 && l.rows + l.cols > 0; };
  bool fused = true;
  for (auto& l : layers)
    if (launched(l) && l.groups < 2 * SMS) fused = false;
  std::vector<Step> steps;
  std::vector<std::vector<float>> v_raw, u_state, v_state;
  for (auto& l : layers) {
    u_state.push_back(l.u);
    v_state.emplace_back(l.groups * l.cols, NAN);
    // σ of a layer with neither rows nor columns is set to 0 by the launcher, not by a kernel.
    steps.push_back({std::vector<float>(l.groups * l.rows, NAN), std::vector<float>(l.groups * l.cols, NAN),
                     std::vector<float>(l.groups, l.rows + l.cols == 0 ? 0.0f : NAN)});
    v_raw.emplace_back(fused ? 0 : l.groups * l.cols, NAN);
  }
  std::vector<size_t> active;
  for (size_t l = 0; l < layers.size(); ++l)
    if (launched(layers[l])) active.push_back(l);
  for (size_t first = 0; first < active.size(); first += DPGAN_POWER_ITERATION_LAYERS) {
    const size_t count = std::min<size_t>(DPGAN_POWER_ITERATION_LAYERS, active.size() - first);
    PowerIterationBatch batch{};
    batch.count = (int32_t)count;
    size_t max_groups = 0, col_tiles = 0, row_blocks = 0;
    for (size_t slot = 0; slot < count; ++slot) {
      const size_t l = active[first + slot];
      const Layer& in = layers[l];
      Step& out = steps[l];
      batch.layers[slot] = {in.w.data(),
                            in_place ? u_state[l].data() : in.u.data(),
                            out.u.data(),
                            out.v.data(),
                            fused ? nullptr : v_raw[l].data(),
                            out.sigma.data(),
                            in_place ? u_state[l].data() : nullptr,
                            in_place ? v_state[l].data() : nullptr,
                            (int64_t)in.groups,
                            (int64_t)in.rows,
                            (int64_t)in.cols};
      max_groups = std::max(max_groups, in.groups);
      col_tiles = std::max(col_tiles, div_ceil(in.cols, 32));
      row_blocks = std::max(row_blocks, div_ceil(in.rows, BLOCK / 32));
    }
    auto run = [&](void (*kernel)(PowerIterationBatch), size_t gx, size_t gy) {
      emu::launch({(unsigned)gx, (unsigned)gy, (unsigned)count}, {BLOCK, 1, 1}, [&] { kernel(batch); });
    };
    if (fused) {
      run(norm_power_iteration_fwd_f32, max_groups, 1);
    } else {
      if (col_tiles > 0) run(norm_power_iteration_wtu_fwd_f32, col_tiles, max_groups);
      // At least one row block: it also writes v.
      run(norm_power_iteration_wv_fwd_f32, std::clamp<size_t>(row_blocks, 1, SMS * 16), max_groups);
      run(norm_power_iteration_normalize_u_fwd_f32, max_groups, 1);
    }
  }
  for (size_t l = 0; in_place && l < layers.size(); ++l) {
    emu::compare_bits("in-place power iteration layer " + std::to_string(l) + ": u state", u_state[l], steps[l].u);
    emu::compare_bits("in-place power iteration layer " + std::to_string(l) + ": v state", v_state[l], steps[l].v);
  }
  return steps;
}

// src/backend/cpu/norm.rs's normalize: x / max(‖x‖, 1e-12), returning x'ᵀx.
double normalize(std::vector<double>& x) {
  double sq = 0, dot = 0;
  for (double v : x) sq += v * v;
  const double norm = std::max(std::sqrt(sq), 1e-12);
  for (double& v : x) {
    const double normalised = v / norm;
    dot += normalised * v;
    v = normalised;
  }
  return dot;
}

// σ as tests/norm.rs's assert_sigma_close: `tolerance` relative plus `steps` steps of f32's
// subnormal grid (2⁻¹⁴⁹) absolute, for σ of a tiny matrix below f32's normal range.
void compare_sigma(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
                   double tolerance, size_t steps) {
  for (size_t g = 0; g < want.size(); ++g)
    if (!(std::fabs(got[g] - want[g]) <= tolerance * std::fabs(want[g]) + steps * std::ldexp(1.0, -149))) {
      ++emu::failures;
      printf("FAIL %s: σ of group %zu is %.9g, expected %.9g\n", what.c_str(), g, (double)got[g], want[g]);
      return;
    }
}

// src/backend/cpu/norm.rs's power_iteration in f64, compared as tests/norm.rs's
// power_iteration_cuda_matches_cpu does: u', v at F32_REDUCTION (1e-5), σ at 1e-5 plus rows + 2
// subnormal steps. A reference of zeros must be matched exactly (the 1e-12 guard).
void check_step(const std::string& what, const Layer& l, const Step& got) {
  const size_t G = l.groups, R = l.rows, C = l.cols;
  std::vector<double> u_want, v_want, sigma_want;
  for (size_t g = 0; g < G; ++g) {
    std::vector<double> v(C, 0.0), u(R, 0.0);
    for (size_t r = 0; r < R; ++r)
      for (size_t c = 0; c < C; ++c) v[c] += (double)l.w[(g * R + r) * C + c] * l.u[g * R + r];
    normalize(v);
    for (size_t r = 0; r < R; ++r)
      for (size_t c = 0; c < C; ++c) u[r] += (double)l.w[(g * R + r) * C + c] * v[c];
    sigma_want.push_back(normalize(u));
    u_want.insert(u_want.end(), u.begin(), u.end());
    v_want.insert(v_want.end(), v.begin(), v.end());
  }
  char dims[80];
  snprintf(dims, sizeof dims, " G%zu %zux%zu", G, R, C);
  emu::compare(what + dims + ": u'", got.u, u_want, 1e-5);
  emu::compare(what + dims + ": v", got.v, v_want, 1e-5);
  compare_sigma(what + dims, got.sigma, sigma_want, 1e-5, R + 2);
}

void test_power_iteration(size_t groups, size_t rows, size_t cols) {
  const Layer l = layer(groups, rows, cols);
  check_step("power iteration", l, power_iterations({l})[0]);
  check_step("in-place power iteration", l, power_iterations({l}, true)[0]);
}

// tests/norm.rs's guard cases: zero W, zero u, both (zeros out, not NaN); W scaled by 1e-20
// (below the guard: σ subnormal); a zero group beside an ordinary one.
void test_power_iteration_guard(size_t groups, size_t rows, size_t cols) {
  const Layer l = layer(groups, rows, cols);
  const std::vector<float> zw(l.w.size(), 0.0f), zu(l.u.size(), 0.0f);
  std::vector<float> tiny = l.w, mixed = l.w;
  for (float& x : tiny) x *= 1e-20f;
  std::fill(mixed.begin(), mixed.begin() + rows * cols, 0.0f);
  const std::pair<const char*, Layer> cases[] = {
      {"zero W", {groups, rows, cols, zw, l.u}},
      {"zero u", {groups, rows, cols, l.w, zu}},
      {"both zero", {groups, rows, cols, zw, zu}},
      {"W scaled by 1e-20", {groups, rows, cols, tiny, l.u}},
      {"first group zero", {groups, rows, cols, mixed, l.u}},
  };
  for (auto& [what, c] : cases) check_step(what, c, power_iterations({c})[0]);
}

// tests/norm.rs's batched_power_iterations_equal_one_call_per_layer: each layer of a batch matches
// the reference. Shapes after mixed_layers (reduced), layer 7 without groups; past 16 layers the
// batch takes two launches.
void test_batched_power_iterations(size_t groups, size_t count) {
  const std::pair<size_t, size_t> shapes[] = {{8, 25}, {16, 30}, {5, 32}, {1, 17}, {10, 9},
                                              {13, 31}, {3, 1}, {0, 7}, {5, 0}, {1, 1}};
  std::vector<Layer> layers;
  for (size_t l = 0; l < count; ++l) {
    const auto [rows, cols] = shapes[l % 10];
    layers.push_back(layer(l == 7 ? 0 : groups, rows, cols));
  }
  for (bool in_place : {false, true}) {
    const auto batched = power_iterations(layers, in_place);
    for (size_t l = 0; l < count; ++l)
      check_step(std::string(in_place ? "in-place " : "") + "batch of " + std::to_string(count) + " layer " + std::to_string(l),
                 layers[l], batched[l]);
  }
}

// ---- Elementwise norm kernels (norm.rs: grid_for's 256-thread blocks, 16 per SM) ----

uint3_ grid_for(size_t n) { return {(unsigned)std::clamp<size_t>(div_ceil(n, 256), 1, SMS * 16), 1, 1}; }

// src/backend/cpu/norm.rs's spectral_divide_backward, against tests/norm.rs's F32_ELEMENTWISE (1e-6).
void test_spectral_divide(size_t G, size_t R, size_t C) {
  const size_t n = G * R * C;
  const auto dw = emu::randn(n), c = emu::randn(G), u = emu::randn(G * R), v = emu::randn(G * C);
  std::uniform_real_distribution<float> sigma_dist(0.5f, 3.0f);
  std::vector<float> sigma(G);
  for (float& s : sigma) s = sigma_dist(emu::rng);
  std::vector<double> want(n);
  for (size_t e = 0; e < n; ++e) {
    const size_t g = e / (R * C), row = e % (R * C) / C, col = e % C;
    want[e] = ((double)dw[e] - (double)c[g] * u[g * R + row] * v[g * C + col]) / sigma[g];
  }
  std::vector<float> got(n, NAN);
  const SpectralDivideBwdParams p{(int64_t)n, (int64_t)R, fdm((uint32_t)(R * C)), fdm((uint32_t)C)};
  emu::launch(grid_for(n), {256, 1, 1}, [&] {
    norm_spectral_divide_bwd_f32(p, dw.data(), c.data(), u.data(), v.data(), sigma.data(), got.data());
  });
  emu::compare("spectral divide bwd G" + std::to_string(G) + " " + std::to_string(R) + "x" + std::to_string(C), got,
               want, 1e-6);
}

// src/backend/cpu/norm.rs's pixel_norm and pixel_norm_backward over x [N, C, P], against
// tests/norm.rs's F32_REDUCTION (1e-5) for y, inv and dx. The backward takes the reference's inv
// rounded to f32 (what the CPU's forward returns), so that it is checked on its own.
void test_pixel_norm(size_t N, size_t C, size_t P, float eps) {
  const size_t numel = N * C * P, positions = N * P;
  const auto x = emu::randn(numel), dy = emu::randn(numel);
  std::vector<double> y_want(numel), inv_want(positions), dx_want(numel);
  std::vector<float> inv32(positions);
  for (size_t i = 0; i < N; ++i)
    for (size_t q = 0; q < P; ++q) {
      auto at = [&](size_t c) { return (i * C + c) * P + q; };
      double sum_sq = 0;
      for (size_t c = 0; c < C; ++c) sum_sq += (double)x[at(c)] * x[at(c)];
      const double inv = 1.0 / std::sqrt(sum_sq / C + (double)eps);
      for (size_t c = 0; c < C; ++c) y_want[at(c)] = x[at(c)] * inv;
      inv_want[i * P + q] = inv;
      inv32[i * P + q] = (float)inv;
      const double inv_f = inv32[i * P + q];
      double s = 0;
      for (size_t c = 0; c < C; ++c) s += (double)x[at(c)] * dy[at(c)];
      const double k = inv_f * inv_f * inv_f * s / C;
      for (size_t c = 0; c < C; ++c) dx_want[at(c)] = inv_f * dy[at(c)] - x[at(c)] * k;
    }
  // pixel_norm_params: 1/C rounded once; the backward's eps is unused (0).
  PixelNormParams p{(int64_t)positions, (int64_t)C, (int64_t)P, eps, (float)(1.0 / (double)C)};
  std::vector<float> y(numel, NAN), inv(positions, NAN), dx(numel, NAN);
  emu::launch(grid_for(positions), {256, 1, 1}, [&] { norm_pixel_norm_fwd_f32(p, x.data(), y.data(), inv.data()); });
  p.eps = 0.0f;
  emu::launch(grid_for(positions), {256, 1, 1},
              [&] { norm_pixel_norm_bwd_f32(p, x.data(), inv32.data(), dy.data(), dx.data()); });
  char what[80];
  snprintf(what, sizeof what, " N%zu C%zu P%zu", N, C, P);
  emu::compare(std::string("pixel norm y") + what, y, y_want, 1e-5);
  emu::compare(std::string("pixel norm inv") + what, inv, inv_want, 1e-5);
  emu::compare(std::string("pixel norm dx") + what, dx, dx_want, 1e-5);
}

int main() {
  // tests/reduce.rs's patterns: [G, B, F] to [G, 1, F], [G, B, 1], [1, 1, F], [1, B, 1] and a scalar;
  // size-1 dims, nothing summed, a rank-0 plan, four alternations each way; splits of either
  // kernel (second pass: the inner kernel over [out, splits]); outputs past one grid's worth
  // (the inner kernel strides past 256 outputs, the outer past 32 tiles of 32); odd tails.
  test_sum_to({3, 5, 7}, {3, 1, 7}, false, false);
  test_sum_to({3, 5, 7}, {3, 5, 1}, true, false);
  test_sum_to({3, 5, 7}, {1, 1, 7}, false, false);
  test_sum_to({3, 5, 7}, {1, 5, 1}, true, false);
  test_sum_to({3, 5, 7}, {1, 1, 1}, true, false);
  test_sum_to({7}, {1}, true, false);
  test_sum_to({1}, {1}, false, false);
  test_sum_to({3, 1, 5}, {3, 1, 5}, false, false);
  test_sum_to({5, 1, 7}, {1, 1, 7}, false, false);
  test_sum_to({2, 9, 3, 4, 5}, {2, 1, 3, 1, 1}, true, false);
  test_sum_to({2, 3, 2, 3, 2, 3, 2, 3}, {2, 1, 2, 1, 2, 1, 2, 1}, true, false);
  test_sum_to({2, 3, 2, 3, 2, 3, 2, 3}, {1, 3, 1, 3, 1, 3, 1, 3}, false, false);
  test_sum_to({2, 3000}, {2, 1}, true, true);                   // 3 splits of 1,000
  test_sum_to({1, 3, 5000}, {1, 3, 1}, true, true);             // [G, B, F] to [G, B, 1]: 5 splits
  test_sum_to({2, 600, 8, 7, 7}, {2, 1, 8, 1, 1}, true, true);  // a conv bias: two runs each, 4 splits
  test_sum_to({1, 5000, 7}, {1, 1, 7}, false, true);            // 8 splits of 625
  test_sum_to({5, 300, 13}, {5, 1, 13}, false, true);           // 65 outputs (a tile's tail), 2 splits
  test_sum_to({2, 50, 600}, {2, 1, 600}, false, false);         // 38 tiles over 32 blocks
  test_sum_to({601, 37}, {601, 1}, true, false);                // 601 outputs over 256 warps
  test_sum_to({3, 4, 70}, {1, 1, 70}, false, false);
  printf("sum_to done, %d failures\n", emu::failures);

  // tests/reduce.rs's shapes: rows of 1, a warp's tail, rows longer than a block; rows past 256
  // (grid-striding).
  for (auto [rows, cols] : std::vector<std::pair<size_t, size_t>>{
           {1, 1}, {7, 1}, {9, 10}, {3, 33}, {5, 257}, {2, 1000}, {300, 3}, {601, 10}})
    test_log_softmax(rows, cols);
  printf("log_softmax done, %d failures\n", emu::failures);

  // tests/norm.rs's shapes, reduced: G < 4 takes the split launches, G ≥ 4 the fused kernel;
  // scalars, tails of the 512-thread block (513 columns), a 32-column tile and a warp; 600 rows
  // (past the Wv kernel's 32 clamped row blocks of 16, and past a block in u's normalisation); empty
  // dims (σ = 0; nothing launched without groups).
  for (auto [g, r, c] : std::vector<std::tuple<size_t, size_t, size_t>>{
           {1, 1, 1}, {3, 7, 12}, {2, 12, 5}, {3, 64, 25}, {1, 1, 300}, {2, 3, 1}, {1, 600, 3},
           {5, 33, 513}, {4, 8, 17}, {6, 64, 25}, {4, 600, 3}, {2, 0, 3}, {2, 3, 0}, {0, 4, 5}, {5, 0, 3}, {5, 3, 0}})
    test_power_iteration(g, r, c);
  test_power_iteration_guard(2, 5, 8);
  test_power_iteration_guard(4, 5, 8);   // fused
  test_batched_power_iterations(1, 18);  // 17 launched (layer 7 has no groups): 16, then 1
  test_batched_power_iterations(4, 5);   // fused
  printf("power iteration done, %d failures\n", emu::failures);

  // tests/norm.rs's shapes; 33,858 elements stride over the 32 × 256 threads.
  for (auto [g, r, c] : std::vector<std::tuple<size_t, size_t, size_t>>{
           {1, 1, 1}, {3, 7, 12}, {4, 64, 25}, {1, 1, 4096}, {2, 33, 513}, {5, 3, 1}})
    test_spectral_divide(g, r, c);
  // tests/norm.rs's shapes as [N, C, P] (the single channel with eps 0.5: with a tiny eps its
  // gradient cancels), and 8,405 positions over the 32 × 256 threads.
  test_pixel_norm(3, 256, 16, 1e-8f);
  test_pixel_norm(10, 64, 64, 1e-8f);
  test_pixel_norm(2, 1, 49, 0.5f);
  test_pixel_norm(4, 33, 1, 1e-8f);
  test_pixel_norm(3, 7, 143, 1e-8f);
  test_pixel_norm(5, 3, 1681, 1e-8f);
  printf("norm done, %d failures\n", emu::failures);
  return emu::finish("reductions");
}
