// The shared-memory tiled GEMM main loop that gemm.cu and conv.cu build on.
//
// C (M × N) = A (M × K) · B (K × N), one square tile of C per 256-thread block, K walked in steps
// of 16. A kernel's main loop is one of four *builds* (`Build` below):
// - F32: 64 × 64 tiles in FFMA, each thread a 4 × 4 micro-tile (rows 4·ty.., columns 4·tx..).
// - Tf32: 64 × 64 tiles on TF32 tensor cores, each warp 16 × 32 of it as four mma.sync m16n8k8
//   products (see tile_product_tf32).
// - Tf32CpAsync: the same tiles and products, fed by a three-stage cp.async pipeline.
// - Tf32Wide: 128 × 128 tiles, each warp 64 × 32 (sixteen m16n8k8 products a k8 step, 64
//   accumulators a thread), fed by a four-stage cp.async pipeline: half the shared-memory traffic
//   of a 64 × 64 tile per product (1.5 fragment reads an mma instead of 3), for products large
//   enough to fill its tiles.
// In the register-staged builds every thread fetches its share of A's and B's tile of the next K
// step from global memory into registers while the current one is multiplied out of shared memory,
// so the loads of one step overlap the arithmetic of the previous.
//
// The operands are reached through *loaders*, so that a convolution can gather its im2col matrix
// on the fly instead of storing it. A loader is a struct with
//   static constexpr bool K_CONTIGUOUS;   // which of (k, m|n) consecutive threads step along
//   template <class Put> __device__ void fetch(int k0, Put&& put) const;
// which calls put(i, address, in_range) for i < Slots::LOADS: element
// (k0 + Slots::kk(i), mn0 + Slots::mn(i)) of its operand is *address when in_range, and 0 outside
// the matrix (every tail is checked in the loader; address is then still some address of the
// operand, never read). The register-staged
// loop loads the elements, the cp.async one copies them. The output goes through an *epilogue* whose
// address is separable: element (m, n) lives at out[row(m) + col(n)].
#pragma once
#include <type_traits>

#include "common.cuh"

namespace dpgan {
namespace tile {

constexpr int BK = 16;       // K per step
constexpr int THREADS = 256;
constexpr int TM = 4;        // rows per thread (FFMA)
constexpr int TN = 4;        // columns per thread (FFMA); registers per m16n8 product (TF32)

// Which element (kk, mn) of a BK × TILE operand tile a thread's i-th load covers (i < LOADS), and so
// which addresses a warp touches in global and in shared memory. Either way a thread keeps one
// coordinate for the whole main loop, which the loaders use to decode it once.
// - K_CONTIGUOUS (a row-major A, a transposed B). FFMA: 16 consecutive threads walk k, a warp
//   stores k 0..15 of 2 rows. TF32: 8 consecutive threads walk k (one 32-byte sector of a row), 16
//   such groups take 16 rows and the block's halves k 0..7 and 8..15, a warp stores k 0..7 (or
//   8..15) of 4 rows; kk / 4 mod 2, which smem_col needs, then stays fixed per thread. Load i
//   takes the rows 16 further on.
// - Otherwise TILE consecutive threads walk m or n, and a warp stores 32 consecutive columns of one
//   k. FFMA: the thread's k step by THREADS / TILE; TF32: a thread takes LOADS consecutive k.
// A loader picks its Slot from the main loop's build, so both agree on the mapping.
template <bool K_CONTIGUOUS, bool TF32, int TILE>
struct Slot {
  static constexpr int LOADS = TILE * BK / THREADS;
  static_assert(BK == 16 && THREADS == 256 && TILE % 64 == 0 && LOADS * THREADS == TILE * BK,
                "the mappings below cover a 16 × TILE tile, TILE a multiple of 64");
  __device__ __forceinline__ static int kk(int i) {
    if (K_CONTIGUOUS) return TF32 ? (int)(threadIdx.x % 8 + 8 * (threadIdx.x / 128)) : (int)(threadIdx.x % BK);
    return TF32 ? (int)(threadIdx.x / TILE) * LOADS + i : (int)(threadIdx.x / TILE) + i * (THREADS / TILE);
  }
  __device__ __forceinline__ static int mn(int i) {
    if (K_CONTIGUOUS) return TF32 ? (int)(threadIdx.x % 128 / 8) + 16 * i : (int)(threadIdx.x / BK) + i * (THREADS / BK);
    return (int)(threadIdx.x % TILE);
  }
};

// Operand tiles, stored k-major (As[k][m], Bs[k][n]) so that the inner product reads rows.
// A kernel takes its build's tiles from mainloop_tiles (below) once and passes them in.
//
// Rows are STRIDE floats apart, and element (kk, mn) sits at column smem_col(kk, mn), chosen so
// that no access of the main loop has a shared-memory bank conflict (32 banks of 4 bytes;
// scripts/emulate/tiled.cpp checks every warp's addresses):
// - FFMA (STRIDE 68): rows stay 16-byte aligned for the float4 reads, which cannot conflict. A
//   K-contiguous warp's stores (k 0..15 × 2 columns) are 2-way; the TF32 mapping would make them
//   conflict-free but costs the FFMA kernels up to 16 registers (ptxas, sm_90), a block an SM.
// - TF32 (STRIDE TILE + 8 ≡ 8 mod 32): lane (group, t4) reads row k8 + t4 (+ 4), column c + group with
//   c a multiple of 8, bank 8·t4 + c + group: all 32 distinct. A K-contiguous warp's stores (k = 8h
//   .. 8h + 7, columns m .. m + 3) would meet 2 to a bank, rows k and k + 4 alike; XOR-ing the column
//   with 4 on rows with k / 4 odd moves those to the other half of their group of 8 columns. The
//   XOR stays inside an aligned group of 8, so the fragment reads stay conflict-free; it is the same
//   for all lanes of a read, and fixed per thread for the stores (Slot keeps k / 4 mod 2).
template <bool TF32, int TILE>
struct SharedTiles {
  static constexpr int STRIDE = TILE + (TF32 ? 8 : 4);
  static_assert(TF32 ? STRIDE % 32 == 8 : STRIDE % 4 == 0,
                "TF32 fragment rows t4 = 0..3 must land 8 banks apart; FFMA rows must stay 16-byte aligned for float4 reads");
  float a[BK][STRIDE];
  float b[BK][STRIDE];
};

// The shared-memory column of an operand tile's element (kk, mn).
template <bool TF32>
__device__ __forceinline__ int smem_col(int kk, int mn) {
  return TF32 ? mn ^ (kk & 4) : mn;
}

// ---- TF32 tensor cores (sm_80+): mma.sync.m16n8k8, f32 accumulation ----
//
// With TF32 the block's 8 warps cover the tile as WARPS_M × WARPS_N warp tiles of WM × 32; each
// warp computes its tile as MT × 4 m16n8 products, and acc[f][r] is register c_r of product
// f = 4·mt + nt (rows 16·mt.., columns 8·nt.. of the warp tile), in PTX's fragment layout
// (lane = 4·group + t4: c0, c1 at row group, columns 2·t4 + {0, 1}; c2, c3 eight rows lower).
// Inputs are rounded to TF32 (10-bit mantissa, round to nearest, ties away) as cuBLAS does.
// The host emulation (scripts/emulate/tiled.cpp) supplies its own to_tf32 and mma_tf32.
#ifndef DPGAN_HOST_EMULATION
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// c += a · b for one m16n8k8 TF32 product held by the warp's 32 lanes.
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// x rounded to TF32, as an f32 (the low 13 mantissa bits zero): what the TF32 main loop stores in
// shared memory, so that each element is rounded once, not once per fragment that reads it.
__device__ __forceinline__ float round_tf32(float x) {
  return __uint_as_float(to_tf32(x));
}

// The bits of a value already rounded by round_tf32, as mma_tf32 takes them.
__device__ __forceinline__ uint32_t tf32_bits(float x) {
  return __float_as_uint(x);
}

// ---- Builds ----

// How a kernel's main loop is built (see the top of this file): FFMA or TF32, register-staged or
// through a cp.async pipeline of STAGES shared-memory stages, TILE × TILE tiles of C. Everything
// the loaders, the main loop and the epilogue need to agree on derives from it.
template <bool TF32_, bool CP_ASYNC_, int TILE_>
struct Build {
  static constexpr bool TF32 = TF32_, CP_ASYNC = CP_ASYNC_;
  static constexpr int TILE = TILE_;  // rows and columns of C per block
  // TF32: the warps' layout over the tile, and each warp's products (FFMA: unused).
  static constexpr int WN = 32;
  static constexpr int WARPS_N = TILE / WN, WARPS_M = THREADS / 32 / WARPS_N, WM = TILE / WARPS_M;
  static constexpr int MT = WM / 16, NT = WN / 8;
  // A thread's accumulators are float[FRAGS][4]: FFMA acc[i][j] at row 4·ty + i, column 4·tx + j;
  // TF32 one row per m16n8 product.
  static constexpr int FRAGS = TF32 ? MT * NT : TM;
  // The cp.async pipeline's stages: three on 64 × 64 tiles (27 KiB), four on 128 × 128 (68 KiB,
  // for the one or two blocks an SM that its registers allow).
  static constexpr int STAGES = !CP_ASYNC ? 1 : TILE == 64 ? 3 : 4;
  using Stage = SharedTiles<TF32, TILE>;
  using Tiles = typename std::conditional<CP_ASYNC, Stage[STAGES], Stage>::type;
  // Past 48 KiB a block's shared memory must be dynamic, opted into per kernel (the launcher sets
  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES and passes the size, src/backend/cuda/gemm.rs).
  static constexpr bool DYNAMIC_SHARED = sizeof(Tiles) > 48 * 1024;
  template <bool K_CONTIGUOUS>
  using Slots = Slot<K_CONTIGUOUS, TF32, TILE>;
  static constexpr int LOADS = Slots<true>::LOADS;

  static_assert(TF32 || (!CP_ASYNC && TILE == 64), "FFMA runs register-staged 64 × 64 tiles (4 × 4 per thread)");
  static_assert(!TF32 || (WARPS_M * WM == TILE && WM % 16 == 0 && THREADS % 32 == 0 && BK % 8 == 0),
                "the warps' m16n8k8 products cover the tile");
  static_assert(sizeof(Tiles) <= 99 * 1024, "sm_86 and sm_89 give a block at most 99 KiB of shared memory");
};
using F32 = Build<false, false, 64>;
using Tf32 = Build<true, false, 64>;
using Tf32CpAsync = Build<true, true, 64>;
using Tf32Wide = Build<true, true, 128>;
static_assert(sizeof(Tf32Wide::Tiles) == 69632 && Tf32Wide::DYNAMIC_SHARED,
              "the wide build's dynamic shared memory: WIDE_SHARED_BYTES in src/backend/cuda/gemm.rs");

// The shared memory of build B's main loop for this block: a static allocation, or the block's
// dynamic shared memory when it needs more than 48 KiB. A launch that gave it less than the tiles
// need traps (an error the launcher reports) instead of reading past it.
template <class B>
__device__ __forceinline__ typename B::Tiles& mainloop_tiles() {
#ifdef DPGAN_HOST_EMULATION
  static typename B::Tiles tiles;  // one per kernel, shared by the emulated block's threads
  return tiles;
#else
  if constexpr (B::DYNAMIC_SHARED) {
    extern __shared__ __align__(16) unsigned char dynamic_shared[];
    uint32_t given;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(given));
    if (given < sizeof(typename B::Tiles)) __trap();
    return *reinterpret_cast<typename B::Tiles*>(dynamic_shared);
  } else {
    __shared__ __align__(16) typename B::Tiles tiles;
    return tiles;
  }
#endif
}

// The tile row and column of this thread's acc[f][r].
template <class B>
__device__ __forceinline__ int acc_row(int f, int r) {
  if (B::TF32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    return (warp / B::WARPS_N) * B::WM + (f / B::NT) * 16 + lane / 4 + (r >= 2 ? 8 : 0);
  }
  return (int)(threadIdx.x / (B::TILE / TN)) * TM + f;
}
template <class B>
__device__ __forceinline__ int acc_col(int f, int r) {
  if (B::TF32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    return (warp % B::WARPS_N) * B::WN + (f % B::NT) * 8 + (lane % 4) * 2 + (r & 1);
  }
  return (int)(threadIdx.x % (B::TILE / TN)) * TN + r;
}

// acc += the tile's A · B over the BK staged in shared memory, on tensor cores. ROUNDED: the tiles
// hold values rounded to TF32 already (the register-staged loop rounds on its way in); else each
// fragment element is rounded as it is read (what a cp.async copy, which cannot convert, needs).
// Per k8 step a warp reads its MT A fragments once and each of its 4 B fragments once, and
// multiplies every pair: 4·MT + 2·4 reads for 4·MT products.
template <class B, bool ROUNDED>
__device__ __forceinline__ void tile_product_tf32(const typename B::Stage& s, float (&acc)[B::FRAGS][4]) {
  static_assert(B::TF32, "a TF32 build");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int group = lane / 4, t4 = lane % 4;
  const int m = (warp / B::WARPS_N) * B::WM + group, n = (warp % B::WARPS_N) * B::WN + group;
  auto bits = [](float x) { return ROUNDED ? tf32_bits(x) : to_tf32(x); };
  auto a_at = [&](int kk, int mm) { return bits(s.a[kk][smem_col<true>(kk, mm)]); };
  auto b_at = [&](int kk, int nn) { return bits(s.b[kk][smem_col<true>(kk, nn)]); };
#pragma unroll
  for (int k8 = 0; k8 < BK; k8 += 8) {
    const int k = k8 + t4;
    uint32_t a[B::MT][4];
#pragma unroll
    for (int mt = 0; mt < B::MT; ++mt) {
      const int r = m + 16 * mt;
      a[mt][0] = a_at(k, r);
      a[mt][1] = a_at(k, r + 8);
      a[mt][2] = a_at(k + 4, r);
      a[mt][3] = a_at(k + 4, r + 8);
    }
#pragma unroll
    for (int nt = 0; nt < B::NT; ++nt) {
      const uint32_t b[2] = {b_at(k, n + 8 * nt), b_at(k + 4, n + 8 * nt)};
#pragma unroll
      for (int mt = 0; mt < B::MT; ++mt) mma_tf32(acc[mt * B::NT + nt], a[mt], b);
    }
  }
}

// acc += the tile's A · B over the BK staged in shared memory, in FFMA: 4 × 4 per thread.
__device__ __forceinline__ void tile_product_f32(const SharedTiles<false, 64>& s, float (&acc)[TM][TN]) {
  const int tx = threadIdx.x % (64 / TN);
  const int ty = threadIdx.x / (64 / TN);
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    const float4 av = *reinterpret_cast<const float4*>(&s.a[kk][ty * TM]);
    const float4 bv = *reinterpret_cast<const float4*>(&s.b[kk][tx * TN]);
    const float am[TM] = {av.x, av.y, av.z, av.w};
    const float bn[TN] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(am[i], bn[j], acc[i][j]);
  }
}

// Whether a loader fetches by the slot mapping of build B's main loop.
template <class B, class Loader>
constexpr bool fetches_slots = std::is_same<typename Loader::Slots, typename B::template Slots<Loader::K_CONTIGUOUS>>::value;

template <int F>
__device__ __forceinline__ void zero_accumulators(float (&acc)[F][4]) {
#pragma unroll
  for (int f = 0; f < F; ++f)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[f][r] = 0.0f;
}

// A loader's elements at K step k0, into registers (0 outside the matrix).
template <class Loader>
__device__ __forceinline__ void load_registers(const Loader& l, int k0, float (&r)[Loader::Slots::LOADS]) {
  l.fetch(k0, [&](int i, const float* p, bool in_range) { r[i] = in_range ? *p : 0.0f; });
}

// acc = A[:, k_begin:k_end] · B[k_begin:k_end, :] for this block's tile, register-staged; every
// thread of the block must call it (it synchronises). k_begin and k_end are uniform across the
// block. acc[f][r] is element (acc_row<B>(f, r), acc_col<B>(f, r)) of the tile.
template <class B, class ALoader, class BLoader>
__device__ __forceinline__ void mainloop(const ALoader& a, const BLoader& b, int k_begin, int k_end,
                                         typename B::Stage& s, float (&acc)[B::FRAGS][4]) {
  static_assert(!B::CP_ASYNC, "a register-staged build");
  using SA = typename ALoader::Slots;
  using SB = typename BLoader::Slots;
  zero_accumulators(acc);
  if (k_begin >= k_end) return;

  float ra[B::LOADS], rb[B::LOADS];
  load_registers(a, k_begin, ra);
  load_registers(b, k_begin, rb);
  for (int k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
    for (int i = 0; i < B::LOADS; ++i) {
      s.a[SA::kk(i)][smem_col<B::TF32>(SA::kk(i), SA::mn(i))] = B::TF32 ? round_tf32(ra[i]) : ra[i];
      s.b[SB::kk(i)][smem_col<B::TF32>(SB::kk(i), SB::mn(i))] = B::TF32 ? round_tf32(rb[i]) : rb[i];
    }
    __syncthreads();
    // Fetch the next step's operands while this one is multiplied out of shared memory.
    if (k0 + BK < k_end) {
      load_registers(a, k0 + BK, ra);
      load_registers(b, k0 + BK, rb);
    }
    if constexpr (B::TF32) {
      tile_product_tf32<B, true>(s, acc);
    } else {
      tile_product_f32(s, acc);
    }
    __syncthreads();
  }
}

// ---- TF32 with a cp.async pipeline (sm_80+) ----
//
// The register-staged loop above holds one K step in flight (in registers) and rounds each element
// to TF32 on its way into shared memory, so every fragment read is a plain load. This variant
// copies global memory straight into shared memory with cp.async, STAGES − 1 K steps ahead of the
// product, one barrier per step instead of two, and rounds each fragment element as it is read
// (cp.async cannot convert). Same slots and conflict-free columns; which build is faster is for a
// GPU to say (`dpgan bench kernels`), so all are kept.

#ifndef DPGAN_HOST_EMULATION
// Copies one float from global to shared memory, asynchronously; out of range it writes a zero
// (a source size of 0 reads nothing and zero-fills).
__device__ __forceinline__ void cp_async_f32(float* dst, const float* src, bool in_range) {
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(d), "l"(src), "r"(in_range ? 4 : 0) : "memory");
}
// The "memory" clobbers keep the compiler from moving shared-memory accesses across the copies and
// the waits on its own; the barriers that follow each wait order them between threads.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
#endif

// acc = A[:, k_begin:k_end] · B[k_begin:k_end, :] on TF32 tensor cores through the cp.async
// pipeline; otherwise as `mainloop` (every thread of the block calls it; k_begin, k_end uniform).
template <class B, class ALoader, class BLoader>
__device__ __forceinline__ void mainloop_cp_async(const ALoader& a, const BLoader& b, int k_begin, int k_end,
                                                  typename B::Tiles& s, float (&acc)[B::FRAGS][4]) {
  static_assert(B::TF32 && B::CP_ASYNC && B::STAGES >= 2, "a cp.async build");
  constexpr int STAGES = B::STAGES;
  using SA = typename ALoader::Slots;
  using SB = typename BLoader::Slots;
  zero_accumulators(acc);
  if (k_begin >= k_end) return;
  const int steps = (k_end - k_begin + BK - 1) / BK;
  // Queues K step `step`'s copies into its stage, and commits them as one group (an empty group
  // past the last step, so that the count of groups in flight stays the same).
  auto issue = [&](int step) {
    if (step < steps) {
      typename B::Stage& t = s[step % STAGES];
      const int k0 = k_begin + step * BK;
      a.fetch(k0, [&](int i, const float* p, bool in_range) {
        cp_async_f32(&t.a[SA::kk(i)][smem_col<true>(SA::kk(i), SA::mn(i))], p, in_range);
      });
      b.fetch(k0, [&](int i, const float* p, bool in_range) {
        cp_async_f32(&t.b[SB::kk(i)][smem_col<true>(SB::kk(i), SB::mn(i))], p, in_range);
      });
    }
    cp_async_commit();
  };
#pragma unroll
  for (int step = 0; step < STAGES - 1; ++step) issue(step);
  for (int step = 0; step < steps; ++step) {
    // This thread's copies of step `step` have landed; the barrier makes everyone's visible, and
    // says every warp is done with the stage the next issue overwrites (step − 1's).
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    issue(step + STAGES - 1);
    tile_product_tf32<B, false>(s[step % STAGES], acc);
  }
  // No copy may still be writing shared memory when the block moves on (the next z's tiles).
  cp_async_wait<0>();
  __syncthreads();
}

// The main loop build B names: register-staged (f32 FFMA or TF32), or TF32 through the cp.async
// pipeline. acc[f][r] is element (acc_row<B>(f, r), acc_col<B>(f, r)) of the block's tile.
template <class B, class ALoader, class BLoader>
__device__ __forceinline__ void run_mainloop(const ALoader& a, const BLoader& b, int k_begin, int k_end,
                                             typename B::Tiles& s, float (&acc)[B::FRAGS][4]) {
  static_assert(fetches_slots<B, ALoader> && fetches_slots<B, BLoader>,
                "the loaders must fetch what this main loop's slot mapping stores");
  if constexpr (B::CP_ASYNC) {
    mainloop_cp_async<B>(a, b, k_begin, k_end, s, acc);
  } else {
    mainloop<B>(a, b, k_begin, k_end, s, acc);
  }
}

// Writes the block's tile of C: element (m, n) with m < M and n < N goes to
// out[ep.row(m) + ep.col(n)] as ep.value(m, n, c) (c itself, or with a bias added). The epilogue
// supplies `int64_t row(int)`, `int64_t col(int)` and `float value(int, int, float)`.
template <class B, class Epilogue>
__device__ __forceinline__ void store_tile(const Epilogue& ep, float* __restrict__ out, int m0, int n0, int M, int N,
                                           const float (&acc)[B::FRAGS][4]) {
  if constexpr (B::TF32) {
#pragma unroll
    for (int f = 0; f < B::FRAGS; ++f)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int m = m0 + acc_row<B>(f, r), n = n0 + acc_col<B>(f, r);
        if (m < M && n < N) out[ep.row(m) + ep.col(n)] = ep.value(m, n, acc[f][r]);
      }
  } else {
    // A thread's columns are the same for its TM rows: their offsets are computed once.
    int64_t cols[TN];
    bool col_ok[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + acc_col<B>(0, j);
      col_ok[j] = n < N;
      cols[j] = col_ok[j] ? ep.col(n) : 0;
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int m = m0 + acc_row<B>(i, 0);
      if (m >= M) continue;
      const int64_t row = ep.row(m);
#pragma unroll
      for (int j = 0; j < TN; ++j)
        if (col_ok[j]) out[row + cols[j]] = ep.value(m, n0 + acc_col<B>(0, j), acc[i][j]);
    }
  }
}

// ---- Loaders of plain row-major matrices ----

// Element (mn, k) at ptr[mn·ld + k]: A untransposed ([M, K]) or B transposed ([N, K]).
template <class B>
struct KMajorLoader {
  static constexpr bool K_CONTIGUOUS = true;
  using Slots = typename B::template Slots<K_CONTIGUOUS>;
  const float* __restrict__ ptr;
  int mn0, mn_count, k_count;
  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
    using S = Slots;
    const int k = k0 + S::kk(0);  // the same k for all of a thread's loads
#pragma unroll
    for (int i = 0; i < S::LOADS; ++i) {
      const int mn = mn0 + S::mn(i);
      const bool in_range = k < k_count && mn < mn_count;
      put(i, in_range ? ptr + (int64_t)mn * k_count + k : ptr, in_range);
    }
  }
};

// Element (mn, k) at ptr[k·ld + mn]: A transposed ([K, M]) or B untransposed ([K, N]).
template <class B>
struct MNMajorLoader {
  static constexpr bool K_CONTIGUOUS = false;
  using Slots = typename B::template Slots<K_CONTIGUOUS>;
  const float* __restrict__ ptr;
  int mn0, mn_count, k_count;
  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
    using S = Slots;
    const int mn = mn0 + S::mn(0);  // the same m or n for all of a thread's loads
#pragma unroll
    for (int i = 0; i < S::LOADS; ++i) {
      const int k = k0 + S::kk(i);
      const bool in_range = k < k_count && mn < mn_count;
      put(i, in_range ? ptr + (int64_t)k * mn_count + mn : ptr, in_range);
    }
  }
};

// The K range [begin, end) of split `s`: splits of split_len (a multiple of BK), the last one short.
struct KRange {
  int begin, end;
};
__device__ __forceinline__ KRange split_range(int s, int split_len, int K) {
  const int64_t begin = (int64_t)s * split_len;
  const int64_t end = begin + split_len;
  return {(int)(begin < K ? begin : K), (int)(end < K ? end : K)};
}

}  // namespace tile
}  // namespace dpgan
