// Host stand-in for the CUDA execution model, shared by the emulation programs in this folder
// (scripts/emulate-kernels.sh builds and runs each one). A block runs as one std::thread per CUDA
// thread: __syncthreads is a std::barrier over the block, a warp's shuffles meet at a barrier of
// its own lanes, and a thread that returns leaves both barriers (as an exited thread leaves the
// GPU's), so the real kernel source runs unchanged: index math, tails, grid-striding, shared
// memory, warp and block reductions.
//
// What it cannot show: speed, and races that only a real warp schedule exposes. What it does
// catch beyond a wrong value: a shuffle that reads a lane that has exited or that is past the
// block's last thread (undefined on a GPU), counted in `emu::faults`.
#pragma once
#include <algorithm>
#include <barrier>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

struct uint3_ {
  unsigned x = 0, y = 0, z = 0;
};
thread_local uint3_ threadIdx, blockIdx;
uint3_ gridDim, blockDim;

struct float4 {
  float x, y, z, w;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __restrict__ __restrict

namespace emu {

constexpr int MAX_WARPS = 32;  // 1,024 threads

// The block being run: its barrier, one barrier per warp, the values lanes exchange, and which
// lanes are still running.
struct Block {
  std::unique_ptr<std::barrier<>> all;
  std::unique_ptr<std::barrier<>> warp[MAX_WARPS];
  double slots[MAX_WARPS][32];
  bool alive[MAX_WARPS][32];
  int lanes[MAX_WARPS];
};
inline Block* block = nullptr;
inline int faults = 0;

inline unsigned linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// `lane_of(lane)`'s value of `v` within the calling thread's warp, every lane of the warp calling.
template <class T>
T shuffle(T v, int (*source)(int, int), int arg) {
  const unsigned t = linear_thread();
  const int w = (int)(t / 32), lane = (int)(t % 32);
  block->slots[w][lane] = (double)v;
  block->warp[w]->arrive_and_wait();
  const int from = source(lane, arg);
  T r = v;
  if (from < 0 || from >= block->lanes[w] || !block->alive[w][from]) {
    ++faults;  // racy count, but a fault is a failure whatever its count
  } else {
    r = (T)block->slots[w][from];
  }
  block->warp[w]->arrive_and_wait();  // before the next shuffle overwrites the slots
  return r;
}

}  // namespace emu

inline void __syncthreads() { emu::block->all->arrive_and_wait(); }

// Values travel through a double slot: exact for float, double and 32-bit integers.
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  return emu::shuffle<T>(v, [](int lane, int m) { return lane ^ m; }, lane_mask);
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta) {
  return emu::shuffle<T>(v, [](int lane, int d) { return lane + d < 32 ? lane + d : lane; }, (int)delta);
}

// ---- The intrinsics the kernels use, with their exact host meaning (compile without contraction:
// -ffp-contract=off, so a*b+c is two roundings as the _rn intrinsics are). ----
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline uint64_t __umul64hi(uint64_t a, uint64_t b) { return (uint64_t)(((unsigned __int128)a * b) >> 64); }
inline uint32_t __funnelshift_l(uint32_t lo, uint32_t hi, int n) {
  n &= 31;
  return n ? (hi << n) | (lo >> (32 - n)) : hi;
}
inline float __uint_as_float(unsigned u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}
inline float __int_as_float(int u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}
inline unsigned __float_as_uint(float x) {
  unsigned u;
  memcpy(&u, &x, 4);
  return u;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
// CUDA's isfinite and isnan are found unqualified.
using std::isfinite;
using std::isnan;
// Round-toward-zero through the FPU's rounding mode.
inline float __double2float_rz(double x) {
  const int mode = std::fegetround();
  std::fesetround(FE_TOWARDZERO);
  volatile float y = (float)x;
  std::fesetround(mode);
  return y;
}
inline float __fmul_rz(float a, float b) {
  const int mode = std::fegetround();
  std::fesetround(FE_TOWARDZERO);
  volatile float y = a * b;
  std::fesetround(mode);
  return y;
}

namespace emu {

// Runs `kernel` over `grid` blocks of `block_dim` threads, one block after another.
template <class F>
void launch(uint3_ grid, uint3_ block_dim, F kernel) {
  const unsigned threads = block_dim.x * block_dim.y * block_dim.z;
  if (threads == 0 || threads > 32u * MAX_WARPS) {
    printf("FAIL launch with %u threads per block\n", threads);
    ++faults;
    return;
  }
  gridDim = grid;
  blockDim = block_dim;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b;
        b.all = std::make_unique<std::barrier<>>(threads);
        for (unsigned w = 0; w * 32 < threads; ++w) {
          b.lanes[w] = (int)std::min(32u, threads - 32 * w);
          b.warp[w] = std::make_unique<std::barrier<>>(b.lanes[w]);
          std::fill(std::begin(b.alive[w]), std::end(b.alive[w]), false);
          std::fill(b.alive[w], b.alive[w] + b.lanes[w], true);
        }
        block = &b;
        std::vector<std::thread> ts;
        ts.reserve(threads);
        for (unsigned t = 0; t < threads; ++t)
          ts.emplace_back([&, t] {
            threadIdx = {t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
            blockIdx = {x, y, z};
            kernel();
            // An exited thread no longer takes part in the block's or its warp's barriers.
            b.alive[t / 32][t % 32] = false;
            b.warp[t / 32]->arrive_and_drop();
            b.all->arrive_and_drop();
          });
        for (auto& t : ts) t.join();
        block = nullptr;
      }
}

inline std::mt19937 rng(12345);

inline std::vector<float> randn(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

inline int failures = 0;

// Relative L2 error of `got` against `want` below `tolerance` (NaN anywhere fails).
inline void compare(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
                    double tolerance = 1e-5) {
  if (got.size() != want.size()) {
    ++failures;
    printf("FAIL %s: %zu values, expected %zu\n", what.c_str(), got.size(), want.size());
    return;
  }
  double err = 0, ref = 0, worst_d = -1;
  size_t worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    double d = std::fabs((double)got[i] - want[i]);
    if (std::isnan(got[i]) != std::isnan(want[i])) d = INFINITY;
    if (std::isnan(got[i]) && std::isnan(want[i])) d = 0;
    err += d * d;
    ref += std::isnan(want[i]) ? 0 : want[i] * want[i];
    if (d > worst_d) worst_d = d, worst = i;
  }
  const double rel = std::sqrt(err) / std::max(std::sqrt(ref), 1e-30);
  if (!(rel < tolerance || err == 0)) {
    ++failures;
    printf("FAIL %s: rel %.3e at tolerance %.1e, worst [%zu] got %.9g want %.9g\n", what.c_str(), rel, tolerance, worst,
           want.empty() ? 0.0 : (double)got[worst], want.empty() ? 0.0 : want[worst]);
  }
}

// Bit-for-bit equality (NaN equal to NaN), for kernels whose reference is exact.
inline void compare_bits(const std::string& what, const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) {
    ++failures;
    printf("FAIL %s: %zu values, expected %zu\n", what.c_str(), got.size(), want.size());
    return;
  }
  for (size_t i = 0; i < want.size(); ++i)
    if (!(std::isnan(got[i]) && std::isnan(want[i])) && __float_as_uint(got[i]) != __float_as_uint(want[i])) {
      ++failures;
      printf("FAIL %s: [%zu] got %.9g (%08x) want %.9g (%08x)\n", what.c_str(), i, (double)got[i], __float_as_uint(got[i]),
             (double)want[i], __float_as_uint(want[i]));
      return;
    }
}

// The exit status: 1 after any mismatch or shuffle fault.
inline int finish(const char* program) {
  if (faults) printf("FAIL %s: %d shuffle(s) read an exited or missing lane\n", program, faults);
  printf("%s: %d failures, %d shuffle faults\n", program, failures, faults);
  return failures != 0 || faults != 0;
}

// Granlund–Montgomery divisor as src/backend/cuda/params.rs's FastDivmod::new builds it.
template <class FastDivmodT>
FastDivmodT fast_divmod(uint32_t d) {
  if (d == 0) d = 1;
  uint32_t shift = 0;
  while ((1ull << shift) < d) ++shift;
  const uint64_t magic = ((1ull << 32) * ((1ull << shift) - d)) / d + 1;
  return {d, (uint32_t)magic, shift, 0};
}

}  // namespace emu
