// Host emulation of the tiled kernels (kernels/gemm.cu, conv.cu, dp_norms.cu) on host_cuda.h: the
// real kernel source (index math, tails, shared-memory staging, K splits, grid-striding in z) runs
// on the CPU against f64 loops, and the shared-memory bank conflicts of the main loop are counted
// from the kernels' own index functions.
#include "host_cuda.h"

// TF32 tensor cores, emulated per warp: each lane scatters its fragments into the warp's matrices
// (PTX's m16n8k8 layout), the warp meets at a barrier, each lane computes its own four outputs.
#define DPGAN_HOST_EMULATION 1
static float g_A[8][16][8], g_B[8][8][8];
inline float bits_to_float(uint32_t u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}
namespace dpgan {
namespace tile {
// cvt.rna.tf32.f32: keep 10 mantissa bits, round to nearest, ties away from zero. A NaN or an
// infinity passes unchanged, as on sm_90 (the SASS skips the rounding for them): adding 0x1000 to a
// NaN whose payload lies in the low bits only would carry it into an infinity.
inline uint32_t to_tf32(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;
  return (u + 0x1000u) & ~0x1fffu;
}
inline void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  auto& A = g_A[w];
  auto& B = g_B[w];
  A[g][t] = bits_to_float(a[0]);
  A[g + 8][t] = bits_to_float(a[1]);
  A[g][t + 4] = bits_to_float(a[2]);
  A[g + 8][t + 4] = bits_to_float(a[3]);
  B[t][g] = bits_to_float(b[0]);
  B[t + 4][g] = bits_to_float(b[1]);
  emu::block->warp[w]->arrive_and_wait();
  auto dot = [&](int r, int col, float acc) {
    for (int k = 0; k < 8; ++k) acc += A[r][k] * B[k][col];
    return acc;
  };
  c[0] = dot(g, 2 * t, c[0]);
  c[1] = dot(g, 2 * t + 1, c[1]);
  c[2] = dot(g + 8, 2 * t, c[2]);
  c[3] = dot(g + 8, 2 * t + 1, c[3]);
  emu::block->warp[w]->arrive_and_wait();  // before the next product overwrites A and B
}

// cp.async, emulated as late as the hardware may be: a copy's value is read when it is issued but
// written to shared memory only when a cp.async.wait_group lets its group go, so a product that
// reads a stage before waiting for it reads the stage's old contents and fails its comparison.
thread_local std::vector<std::pair<float*, float>> t_open_group;
thread_local std::vector<std::vector<std::pair<float*, float>>> t_committed;
inline void cp_async_f32(float* dst, const float* src, bool in_range) { t_open_group.push_back({dst, in_range ? *src : 0.0f}); }
inline void cp_async_commit() {
  t_committed.push_back(std::move(t_open_group));
  t_open_group.clear();
}
template <int N>
inline void cp_async_wait() {
  while (t_committed.size() > (size_t)N) {
    for (auto [dst, v] : t_committed.front()) *dst = v;
    t_committed.erase(t_committed.begin());
  }
}
}  // namespace tile
}  // namespace dpgan

#include "gemm.cu"
#include "conv.cu"
#include "dp_norms.cu"

// Every tiled kernel runs 256 threads a block (kernels/gemm_tile.cuh's THREADS).
template <class F>
void launch(uint3_ grid, F kernel) {
  emu::launch(grid, {256, 1, 1}, kernel);
}

FastDivmod fdm(uint32_t d) { return emu::fast_divmod<FastDivmod>(d); }

std::vector<float> randv(size_t n) { return emu::randn(n); }

void compare(const char* what, const std::vector<float>& got, const std::vector<double>& want) {
  emu::compare(what, got, want, 1e-5);
}

// The TF32 builds of kernels/gemm_tile.cuh beside the register-staged one (F32 and Tf32 by `tf32`).
enum class Piped { No, CpAsync, Wide };
const char* piped_name(Piped p) { return p == Piped::Wide ? " wide" : p == Piped::CpAsync ? " cp.async" : ""; }
int tile_of(Piped p) { return p == Piped::Wide ? 128 : 64; }

// With a pipelined build, the TF32 kernel that feeds the tensor cores that way (tf32 is then true).
void launch_gemm(const GemmParams& p, const float* a, const float* b, float* c, bool tf32, Piped piped) {
  const bool ta = p.trans_a, tb = p.trans_b;
  const int tile = tile_of(piped);
  uint3_ grid{(unsigned)((p.n + tile - 1) / tile), (unsigned)((p.m + tile - 1) / tile), (unsigned)std::min(p.groups * p.splits, 3)};
  launch(grid, [&] {
    if (piped == Piped::Wide) {
      if (ta && tb) gemm_grouped_tt_fwd_tf32_wide(p, a, b, c);
      else if (ta) gemm_grouped_tn_fwd_tf32_wide(p, a, b, c);
      else if (tb) gemm_grouped_nt_fwd_tf32_wide(p, a, b, c);
      else gemm_grouped_nn_fwd_tf32_wide(p, a, b, c);
    } else if (piped == Piped::CpAsync) {
      if (ta && tb) gemm_grouped_tt_fwd_tf32_cp_async(p, a, b, c);
      else if (ta) gemm_grouped_tn_fwd_tf32_cp_async(p, a, b, c);
      else if (tb) gemm_grouped_nt_fwd_tf32_cp_async(p, a, b, c);
      else gemm_grouped_nn_fwd_tf32_cp_async(p, a, b, c);
    } else if (tf32) {
      if (ta && tb) gemm_grouped_tt_fwd_tf32(p, a, b, c);
      else if (ta) gemm_grouped_tn_fwd_tf32(p, a, b, c);
      else if (tb) gemm_grouped_nt_fwd_tf32(p, a, b, c);
      else gemm_grouped_nn_fwd_tf32(p, a, b, c);
    } else {
      if (ta && tb) gemm_grouped_tt_fwd_f32(p, a, b, c);
      else if (ta) gemm_grouped_tn_fwd_f32(p, a, b, c);
      else if (tb) gemm_grouped_nt_fwd_f32(p, a, b, c);
      else gemm_grouped_nn_fwd_f32(p, a, b, c);
    }
  });
}

void test_gemm(int G, int M, int N, int K, bool ta, bool tb, int splits, int split_len, bool tf32 = false,
               Piped piped = Piped::No) {
  // With TF32 the reference multiplies the TF32-rounded inputs (exactly, in f64).
  auto in = [&](float v) { return tf32 ? (double)bits_to_float(dpgan::tile::to_tf32(v)) : (double)v; };
  auto a = randv((size_t)G * M * K), b = randv((size_t)G * K * N);
  std::vector<double> want((size_t)G * M * N, 0.0);
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        double s = 0;
        for (int p = 0; p < K; ++p) {
          double av = in(ta ? a[((size_t)g * K + p) * M + i] : a[((size_t)g * M + i) * K + p]);
          double bv = in(tb ? b[((size_t)g * N + j) * K + p] : b[((size_t)g * K + p) * N + j]);
          s += av * bv;
        }
        want[((size_t)g * M + i) * N + j] = s;
      }
  std::vector<float> c((size_t)splits * G * M * N, NAN);
  GemmParams p{G, M, N, K, ta, tb, splits, split_len};
  launch_gemm(p, a.data(), b.data(), c.data(), tf32, piped);
  std::vector<float> sum((size_t)G * M * N, 0.0f);
  for (int s = 0; s < splits; ++s)
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += c[s * sum.size() + i];
  char what[200];
  snprintf(what, sizeof what, "gemm%s%s G%d M%d N%d K%d ta%d tb%d splits%d", tf32 ? " tf32" : "", piped_name(piped), G, M, N,
           K, ta, tb, splits);
  compare(what, sum, want);
  if (!tf32 || piped != Piped::No) return;
  // The pipelined builds round the same inputs and add each element's products in the same order:
  // the same values bit for bit, each kernel against the register-staged one.
  for (Piped other : {Piped::CpAsync, Piped::Wide}) {
    std::vector<float> piped_c((size_t)splits * G * M * N, NAN);
    launch_gemm(p, a.data(), b.data(), piped_c.data(), true, other);
    emu::compare_bits(std::string(what) + ": the" + piped_name(other) + " build against the register-staged loop", piped_c, c);
  }
}

// gemm_mma_peak_fwd_tf32: each thread's sum is chains × rounds × its four entries of A·B (m16n8k8
// layout: rows group and group + 8, columns 2·t4 and 2·t4 + 1), A and B as the kernel defines them.
void test_mma_peak() {
  const int rounds = 3, blocks = 2, chains = 8;
  std::vector<float> out(blocks * 256, NAN);
  launch({(unsigned)blocks, 1, 1}, [&] { gemm_mma_peak_fwd_tf32(rounds, out.data()); });
  std::vector<double> want(out.size());
  auto product = [](int r, int c) {
    double s = 0;
    for (int k = 0; k < 8; ++k) s += (double)((r + 2 * k) % 5 - 2) * (double)((3 * k + c) % 7 - 3);
    return s;
  };
  for (size_t t = 0; t < out.size(); ++t) {
    const int lane = (int)(t % 32), g = lane / 4, t4 = lane % 4;
    const double four = product(g, 2 * t4) + product(g, 2 * t4 + 1) + product(g + 8, 2 * t4) + product(g + 8, 2 * t4 + 1);
    want[t] = (double)chains * rounds * four;
  }
  emu::compare("mma peak", out, want, 0.0);
}

struct Geo {
  int G, B, C, H, W, O, KH, KW, S, P;
};

ConvParams params_of(const Geo& q, int splits, int split_len) {
  int HO = (q.H + 2 * q.P - q.KH) / q.S + 1, WO = (q.W + 2 * q.P - q.KW) / q.S + 1;
  ConvParams p{q.G, q.B, q.C, q.H, q.W, q.O, q.KH, q.KW, q.S, q.P, HO, WO, splits, split_len,
               fdm(q.KH * q.KW), fdm(q.KW), fdm(q.H * q.W), fdm(q.W), fdm(HO * WO), fdm(WO), fdm(q.S)};
  return p;
}

// With a pipelined build (and tf32) the TF32 kernels that feed the tensor cores that way.
void test_conv(const Geo& q, int splits, int split_len, bool tf32 = false, Piped piped = Piped::No) {
  const bool cp_async = piped == Piped::CpAsync, wide = piped == Piped::Wide;
  const unsigned tile = (unsigned)tile_of(piped);
  const int HO = (q.H + 2 * q.P - q.KH) / q.S + 1, WO = (q.W + 2 * q.P - q.KW) / q.S + 1;
  const size_t xs = (size_t)q.G * q.B * q.C * q.H * q.W, ws = (size_t)q.G * q.O * q.C * q.KH * q.KW,
               ys = (size_t)q.G * q.B * q.O * HO * WO;
  auto x = randv(xs), w = randv(ws), dy = randv(ys);
  // With TF32 the reference multiplies the TF32-rounded inputs (exactly, in f64).
  auto rounded = [&](const std::vector<float>& v) {
    std::vector<float> r(v);
    if (tf32)
      for (auto& e : r) e = bits_to_float(dpgan::tile::to_tf32(e));
    return r;
  };
  const auto xr = rounded(x), wr = rounded(w), dyr = rounded(dy);
  std::vector<double> y_want(ys, 0), dx_want(xs, 0), dw_want(ws, 0);
  for (int g = 0; g < q.G; ++g)
    for (int b = 0; b < q.B; ++b)
      for (int o = 0; o < q.O; ++o)
        for (int oy = 0; oy < HO; ++oy)
          for (int ox = 0; ox < WO; ++ox)
            for (int c = 0; c < q.C; ++c)
              for (int i = 0; i < q.KH; ++i)
                for (int j = 0; j < q.KW; ++j) {
                  int iy = oy * q.S + i - q.P, ix = ox * q.S + j - q.P;
                  if (iy < 0 || ix < 0 || iy >= q.H || ix >= q.W) continue;
                  size_t xi = ((((size_t)g * q.B + b) * q.C + c) * q.H + iy) * q.W + ix;
                  size_t wi = ((((size_t)g * q.O + o) * q.C + c) * q.KH + i) * q.KW + j;
                  size_t yi = ((((size_t)g * q.B + b) * q.O + o) * HO + oy) * WO + ox;
                  y_want[yi] += (double)xr[xi] * wr[wi];
                  dx_want[xi] += (double)dyr[yi] * wr[wi];
                  dw_want[wi] += (double)xr[xi] * dyr[yi];
                }
  char what[200];
  snprintf(what, sizeof what, "%s%sG%d B%d C%d %dx%d O%d k%dx%d s%d p%d", tf32 ? "tf32 " : "", wide ? "wide " : cp_async ? "cp.async " : "", q.G, q.B, q.C, q.H, q.W, q.O, q.KH, q.KW, q.S, q.P);
  unsigned z = (unsigned)std::min(q.G, 2);
  {
    ConvParams p = params_of(q, 1, q.C * q.KH * q.KW);
    std::vector<float> y(ys, NAN);
    int N = q.B * HO * WO;
    if (q.O > 0 && N > 0)
      launch({(N + tile - 1) / tile, (q.O + tile - 1) / tile, z},
             [&] {
               (wide       ? conv_conv2d_fwd_tf32_wide
                : cp_async ? conv_conv2d_fwd_tf32_cp_async
                : tf32     ? conv_conv2d_fwd_tf32
                           : conv_conv2d_fwd_f32)(p, x.data(), w.data(), y.data());
             });
    std::string s = std::string("fwd ") + what;
    compare(s.c_str(), y, y_want);
  }
  {
    // One launch per stride phase, as src/backend/cuda/conv.rs's input_grad_phases.
    ConvParams p = params_of(q, 1, q.O * q.KH * q.KW);
    std::vector<float> dx(xs, NAN);
    const int s = q.S;
    for (int py = 0; py < s; ++py)
      for (int px = 0; px < s; ++px) {
        const int fy = (py + s - q.P % s) % s, fx = (px + s - q.P % s) % s;
        const int rows = fy < q.H ? (q.H - fy + s - 1) / s : 0, cols = fx < q.W ? (q.W - fx + s - 1) / s : 0;
        const int ty = py < q.KH ? (q.KH - py + s - 1) / s : 0, tx = px < q.KW ? (q.KW - px + s - 1) / s : 0;
        if (rows * cols == 0) continue;
        ConvPhase ph{py, px, fy, fx, rows, cols, ty, tx, (fy + q.P - py) / s, (fx + q.P - px) / s, 0, 0,
                     fdm(rows * cols), fdm(cols), fdm(ty * tx), fdm(tx)};
        int N = q.B * rows * cols;
        if (q.C > 0 && N > 0)
          launch({(N + tile - 1) / tile, (q.C + tile - 1) / tile, z},
                 [&] {
                   (wide       ? conv_conv2d_input_grad_bwd_tf32_wide
                    : cp_async ? conv_conv2d_input_grad_bwd_tf32_cp_async
                    : tf32   ? conv_conv2d_input_grad_bwd_tf32
                             : conv_conv2d_input_grad_bwd_f32)(p, ph, dy.data(), w.data(), dx.data());
                 });
      }
    std::string s_ = std::string("dx ") + what;
    compare(s_.c_str(), dx, dx_want);
  }
  {
    ConvParams p = params_of(q, splits, split_len);
    std::vector<float> dwp(ws * splits, NAN);
    int N = q.C * q.KH * q.KW;
    launch({(N + tile - 1) / tile, (q.O + tile - 1) / tile, (unsigned)std::min(q.G * splits, 3)},
           [&] {
             (wide       ? conv_conv2d_weight_grad_bwd_tf32_wide
              : cp_async ? conv_conv2d_weight_grad_bwd_tf32_cp_async
              : tf32   ? conv_conv2d_weight_grad_bwd_tf32
                       : conv_conv2d_weight_grad_bwd_f32)(p, x.data(), dy.data(), dwp.data());
           });
    std::vector<float> dw(ws, 0.0f);
    for (int s = 0; s < splits; ++s)
      for (size_t i = 0; i < ws; ++i) dw[i] += dwp[s * ws + i];
    std::string s = std::string("dw ") + what + " splits " + std::to_string(splits);
    compare(s.c_str(), dw, dw_want);
  }
}

// dp_norms.cu: each example's squared weight-gradient norm against the f64 per-example gradient.
void test_conv_norms(const Geo& q) {
  const int HO = (q.H + 2 * q.P - q.KH) / q.S + 1, WO = (q.W + 2 * q.P - q.KW) / q.S + 1;
  const int E = q.G * q.B, N = q.C * q.KH * q.KW;
  auto x = randv((size_t)E * q.C * q.H * q.W), dy = randv((size_t)E * q.O * HO * WO);
  std::vector<double> want(E, 0.0);
  for (int e = 0; e < E; ++e)
    for (int o = 0; o < q.O; ++o)
      for (int c = 0; c < q.C; ++c)
        for (int i = 0; i < q.KH; ++i)
          for (int j = 0; j < q.KW; ++j) {
            double dw = 0;
            for (int oy = 0; oy < HO; ++oy)
              for (int ox = 0; ox < WO; ++ox) {
                int iy = oy * q.S + i - q.P, ix = ox * q.S + j - q.P;
                if (iy < 0 || ix < 0 || iy >= q.H || ix >= q.W) continue;
                dw += (double)dy[(((size_t)e * q.O + o) * HO + oy) * WO + ox] * x[(((size_t)e * q.C + c) * q.H + iy) * q.W + ix];
              }
            want[e] += dw * dw;
          }
  const unsigned tx = (unsigned)((N + 63) / 64), ty = (unsigned)((q.O + 63) / 64), tiles = tx * ty;
  std::vector<float> partial((size_t)E * tiles, NAN);
  ConvParams p = params_of(q, 1, HO * WO);
  // z below the example count, so that the grid-stride over examples runs too.
  launch({tx, ty, (unsigned)std::max(1, std::min(E, 3))}, [&] { dp_conv2d_weight_grad_sq_norms_bwd_f32(p, x.data(), dy.data(), partial.data()); });
  std::vector<float> got(E, 0.0f);
  for (int e = 0; e < E; ++e)
    for (unsigned t = 0; t < tiles; ++t) got[e] += partial[(size_t)e * tiles + t];
  char what[200];
  snprintf(what, sizeof what, "conv norms G%d B%d C%d %dx%d O%d k%dx%d s%d p%d", q.G, q.B, q.C, q.H, q.W, q.O, q.KH, q.KW, q.S, q.P);
  compare(what, got, want);
}

// Shared-memory bank conflicts of the main loop, from the kernels' own index functions (Slot,
// SharedTiles::STRIDE, smem_col, the builds' warp layouts): for each warp-wide access, the most lanes
// whose 4-byte words are different but share one of the 32 banks. TF32 must be conflict-free in its
// stores (both loader kinds) and fragment reads (PTX's m16n8k8 layout: lane 4·group + t4 holds A
// rows group, group + 8 and B column group, at k = t4, t4 + 4), in every build; FFMA's stores may
// be 2-way (its float4 reads cannot conflict), as gemm_tile.cuh says.
template <class B>
int warp_ways(int warp, const std::function<std::pair<int, int>(int lane)>& element) {
  int most = 0;
  for (int bank = 0; bank < 32; ++bank) {
    std::vector<int> words;
    for (int lane = 0; lane < 32; ++lane) {
      threadIdx = {(unsigned)(32 * warp + lane), 0, 0};
      const auto [kk, mn] = element(lane);
      const int word = kk * B::Stage::STRIDE + dpgan::tile::smem_col<B::TF32>(kk, mn);
      if (word % 32 == bank && std::find(words.begin(), words.end(), word) == words.end()) words.push_back(word);
    }
    most = std::max(most, (int)words.size());
  }
  threadIdx = {0, 0, 0};
  return most;
}

template <class B>
int store_ways() {
  using namespace dpgan::tile;
  using SK = typename B::template Slots<true>;
  using SM = typename B::template Slots<false>;
  int most = 0;
  for (int warp = 0; warp < THREADS / 32; ++warp)
    for (int i = 0; i < B::LOADS; ++i) {
      most = std::max(most, warp_ways<B>(warp, [&](int) { return std::pair{SK::kk(i), SK::mn(i)}; }));
      most = std::max(most, warp_ways<B>(warp, [&](int) { return std::pair{SM::kk(i), SM::mn(i)}; }));
    }
  return most;
}

template <class B>
int tf32_read_ways() {
  using namespace dpgan::tile;
  int most = 0;
  for (int warp = 0; warp < THREADS / 32; ++warp)
    for (int k8 = 0; k8 < BK; k8 += 8)
      for (int dk : {0, 4}) {
        auto k = [&](int lane) { return k8 + lane % 4 + dk; };
        const int m = (warp / B::WARPS_N) * B::WM, n = (warp % B::WARPS_N) * B::WN;
        for (int mt = 0; mt < B::MT; ++mt)
          for (int dm : {0, 8})
            most = std::max(most, warp_ways<B>(warp, [&](int lane) { return std::pair{k(lane), m + 16 * mt + lane / 4 + dm}; }));
        for (int nt = 0; nt < B::NT; ++nt)
          most = std::max(most, warp_ways<B>(warp, [&](int lane) { return std::pair{k(lane), n + 8 * nt + lane / 4}; }));
      }
  return most;
}

// Every (row, column) of the tile is some thread's accumulator exactly once (acc_row, acc_col).
template <class B>
bool accumulators_cover_the_tile() {
  std::vector<int> seen(B::TILE * B::TILE, 0);
  for (unsigned t = 0; t < dpgan::tile::THREADS; ++t) {
    threadIdx = {t, 0, 0};
    for (int f = 0; f < B::FRAGS; ++f)
      for (int r = 0; r < 4; ++r) {
        const int row = dpgan::tile::acc_row<B>(f, r), col = dpgan::tile::acc_col<B>(f, r);
        if (row < 0 || col < 0 || row >= B::TILE || col >= B::TILE) return false;
        ++seen[row * B::TILE + col];
      }
  }
  threadIdx = {0, 0, 0};
  return std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; });
}

void check_bank_conflicts() {
  using namespace dpgan::tile;
  const int f32_stores = store_ways<F32>();
  if (f32_stores > 2) {
    ++emu::failures;
    printf("FAIL bank conflicts: f32 stores %d-way\n", f32_stores);
  }
  printf("bank conflicts: f32 stores %d-way\n", f32_stores);
  auto tf32 = [](auto build, const char* name) {
    using B = decltype(build);
    const int stores = store_ways<B>(), reads = tf32_read_ways<B>();
    if (stores != 1 || reads != 1) {
      ++emu::failures;
      printf("FAIL bank conflicts: %s stores %d-way, reads %d-way\n", name, stores, reads);
    }
    printf("bank conflicts: %s stores %d-way, reads %d-way\n", name, stores, reads);
  };
  tf32(Tf32{}, "tf32");
  tf32(Tf32Wide{}, "tf32 wide");
  if (!accumulators_cover_the_tile<F32>() || !accumulators_cover_the_tile<Tf32>() || !accumulators_cover_the_tile<Tf32Wide>()) {
    ++emu::failures;
    printf("FAIL the accumulators do not cover a tile exactly once\n");
  }
}

int main() {
  check_bank_conflicts();
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      for (int m : {1, 7, 65, 130})
        for (int n : {1, 33, 70})
          for (int k : {0, 1, 17, 40}) test_gemm(1, m, n, k, ta, tb, 1, std::max(k, 1));
      test_gemm(3, 9, 70, 35, ta, tb, 1, 35);
      test_gemm(2, 65, 5, 100, ta, tb, 4, 32);  // slices 32, 32, 32, 4
      test_gemm(2, 3, 66, 48, ta, tb, 3, 16);
      for (int m : {1, 64, 70})
        for (int n : {9, 64, 130})
          for (int k : {0, 5, 40}) test_gemm(1, m, n, k, ta, tb, 1, std::max(k, 1), true);
      test_gemm(2, 65, 70, 100, ta, tb, 4, 32, true);
      // Past one wide tile in M and N, with tails.
      test_gemm(1, 130, 200, 40, ta, tb, 1, 40, true);
      test_gemm(2, 257, 129, 70, ta, tb, 3, 32, true);
    }
  test_mma_peak();
  printf("gemm done, %d failures\n", emu::failures);
  const Geo geos[] = {
      {1, 2, 1, 28, 28, 4, 5, 5, 2, 2},  {1, 2, 4, 14, 14, 6, 5, 5, 2, 2},  {3, 2, 6, 7, 7, 5, 5, 5, 2, 2},
      {1, 2, 4, 8, 8, 5, 3, 3, 1, 1},    {2, 1, 3, 16, 16, 3, 3, 3, 1, 1},  {1, 3, 4, 8, 8, 3, 1, 1, 1, 0},
      {1, 1, 3, 32, 32, 1, 3, 3, 1, 0},  {1, 2, 1, 28, 28, 3, 5, 5, 1, 2},  {1, 2, 3, 14, 14, 4, 5, 5, 1, 0},
      {4, 1, 2, 6, 6, 3, 3, 3, 1, 1},    {2, 2, 3, 9, 13, 4, 3, 3, 2, 1},   {1, 2, 2, 10, 7, 3, 3, 5, 1, 2},
      {1, 2, 2, 11, 8, 2, 4, 4, 3, 1},   {2, 2, 3, 5, 4, 2, 7, 6, 1, 1},    {1, 1, 2, 4, 5, 2, 2, 3, 2, 3},
      {1, 2, 2, 3, 1, 2, 3, 5, 1, 2},    {1, 1, 1, 2, 2, 1, 5, 5, 2, 3},    {1, 2, 70, 5, 6, 66, 3, 3, 1, 1},
      {1, 2, 3, 11, 11, 2, 8, 8, 2, 0},  // the 8x8 s2 conv whose input grad is the DCGAN convT3
      {1, 1, 0, 7, 5, 4, 3, 3, 2, 1},    {1, 2, 3, 0, 4, 2, 3, 3, 1, 2},
  };
  for (const Geo& q : geos) test_conv(q, 1, q.B * ((q.H + 2 * q.P - q.KH) / q.S + 1) * ((q.W + 2 * q.P - q.KW) / q.S + 1));
  test_conv({1, 4, 2, 9, 9, 3, 3, 3, 1, 1}, 3, 128);  // K = 324: slices 128, 128, 68
  test_conv({2, 3, 2, 7, 7, 5, 5, 5, 2, 2}, 2, 32);   // K = 48
  for (Piped piped : {Piped::No, Piped::CpAsync, Piped::Wide}) {
    test_conv({1, 2, 70, 5, 6, 66, 3, 3, 1, 1}, 1, 60, true, piped);
    test_conv({2, 2, 3, 9, 13, 67, 3, 3, 2, 1}, 1, 2 * 5 * 7, true, piped);
    test_conv({1, 2, 65, 11, 11, 3, 8, 8, 2, 0}, 2, 16, true, piped);
    test_conv({1, 2, 130, 9, 9, 140, 3, 3, 1, 1}, 1, 162, true, piped);  // more than one wide tile in M, N and K
  }
  printf("conv done, %d failures\n", emu::failures);
  // GS-WGAN's critic convs (5x5 s2 p2 at 28, 14, 7; reduced channels), tails in O and C·KK, batch 1,
  // G > 1, a 1x1 and an 8x8 s2 (the DCGAN conv-transpose's weight gradient), positions not a
  // multiple of the K step.
  const Geo norm_geos[] = {
      {1, 3, 1, 28, 28, 5, 5, 5, 2, 2}, {2, 2, 3, 14, 14, 70, 5, 5, 2, 2}, {1, 4, 6, 7, 7, 9, 5, 5, 2, 2},
      {3, 1, 2, 9, 13, 4, 3, 3, 1, 1},  {1, 2, 70, 5, 6, 3, 1, 1, 1, 0},  {1, 2, 2, 11, 11, 3, 8, 8, 2, 0},
      {2, 3, 3, 5, 4, 2, 7, 6, 1, 1},   {1, 1, 1, 2, 2, 1, 5, 5, 2, 3},
  };
  for (const Geo& q : norm_geos) test_conv_norms(q);
  printf("conv norms done, %d failures\n", emu::failures);
  return emu::finish("tiled");
}
