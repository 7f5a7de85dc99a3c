// The shared-memory tiled GEMM main loop that gemm.cu and conv.cu build on.
//
// C (M × N) = A (M × K) · B (K × N), one 64 × 64 tile of C per 256-thread block, K walked in steps
// of 16. Each thread holds 16 elements of C in registers and accumulates in f32: in FFMA, a 4 × 4
// micro-tile (rows 4·ty.., columns 4·tx..); on TF32 tensor cores, four mma.sync m16n8k8 fragments
// (see tile_product_tf32). Per K step every thread fetches 4 elements of A's and 4 of B's 64 × 16 tile
// from global memory into registers (the next step's, while the current one is multiplied out of
// shared memory), so the loads of one step overlap the arithmetic of the previous.
//
// The operands are reached through *loaders*, so that a convolution can gather its im2col matrix
// on the fly instead of storing it. A loader is a struct with
//   static constexpr bool K_CONTIGUOUS;   // which of (k, m|n) consecutive threads step along
//   template <class Put> __device__ void fetch(int k0, Put&& put) const;
// which calls put(i, address, in_range) for i < LOADS: element (k0 + Slot::kk(i), mn0 + Slot::mn(i))
// of its operand is *address when in_range, and 0 outside the matrix (every tail is checked in the
// loader; address is then still some address of the operand, never read). The register-staged
// loop loads the elements, the cp.async one copies them. The output goes through an *epilogue* whose
// address is separable: element (m, n) lives at out[row(m) + col(n)].
#pragma once
#include <type_traits>

#include "common.cuh"

namespace dpgan {
namespace tile {

constexpr int BM = 64;       // rows of C per block
constexpr int BN = 64;       // columns of C per block
constexpr int BK = 16;       // K per step
constexpr int THREADS = 256;
constexpr int TM = 4;        // rows per thread (FFMA); n8-tiles per warp (TF32)
constexpr int TN = 4;        // columns per thread (FFMA); registers per n8-tile (TF32)
constexpr int LOADS = BM * BK / THREADS;  // elements of each operand a thread fetches per step

static_assert(BM == BN, "one slot mapping serves both operands");
static_assert((BM / TM) * (BN / TN) == THREADS, "the micro-tiles cover the block tile");
static_assert(LOADS * THREADS == BM * BK, "the loads cover a k-step");

// Which element (kk, mn) of a BK × 64 operand tile a thread's i-th load covers, and so which
// addresses a warp touches in global and in shared memory. Either way a thread keeps one coordinate
// for the whole main loop, which the loaders use to decode it once.
// - K_CONTIGUOUS (a row-major A, a transposed B). FFMA: 16 consecutive threads walk k, a warp
//   stores k 0..15 of 2 rows. TF32: 8 consecutive threads walk k (one 32-byte sector of a row), 16
//   such groups take 16 rows and the block's halves k 0..7 and 8..15, a warp stores k 0..7 (or
//   8..15) of 4 rows; kk / 4 mod 2, which smem_col needs, then stays fixed per thread.
// - Otherwise 64 consecutive threads walk m or n, and a warp stores 32 consecutive columns of one k.
//   FFMA: the thread's k step by 4; TF32: a thread takes LOADS consecutive k (kk / 4 fixed).
// A loader picks its Slot with the main loop's TF32, so both agree on the mapping.
template <bool K_CONTIGUOUS, bool TF32>
struct Slot {
  static_assert(BK == 16 && THREADS == 256 && BM == 64 && LOADS == 4, "the mappings below cover a 16 × 64 tile");
  __device__ __forceinline__ static int kk(int i) {
    if (K_CONTIGUOUS) return TF32 ? (int)(threadIdx.x % 8 + 8 * (threadIdx.x / 128)) : (int)(threadIdx.x % BK);
    return TF32 ? (int)(threadIdx.x / BM) * LOADS + i : (int)(threadIdx.x / BM) + i * (THREADS / BM);
  }
  __device__ __forceinline__ static int mn(int i) {
    if (K_CONTIGUOUS) return TF32 ? (int)(threadIdx.x % 128 / 8) + 16 * i : (int)(threadIdx.x / BK) + i * (THREADS / BK);
    return (int)(threadIdx.x % BM);
  }
};

// Operand tiles, stored k-major (As[k][m], Bs[k][n]) so that the inner product reads rows.
// Declared once by the kernel and passed in, so that several instantiations share one allocation.
//
// Rows are STRIDE floats apart, and element (kk, mn) sits at column smem_col(kk, mn), chosen so
// that no access of the main loop has a shared-memory bank conflict (32 banks of 4 bytes;
// scripts/emulate/tiled.cpp checks every warp's addresses):
// - FFMA (STRIDE 68): rows stay 16-byte aligned for the float4 reads, which cannot conflict. A
//   K-contiguous warp's stores (k 0..15 × 2 columns) are 2-way; the TF32 mapping would make them
//   conflict-free but costs the FFMA kernels up to 16 registers (ptxas, sm_90), a block an SM.
// - TF32 (STRIDE 72 ≡ 8 mod 32): lane (group, t4) reads row k8 + t4 (+ 4), column c + group with
//   c a multiple of 8, bank 8·t4 + c + group: all 32 distinct. A K-contiguous warp's stores (k = 8h
//   .. 8h + 7, columns m .. m + 3) would meet 2 to a bank, rows k and k + 4 alike; XOR-ing the column
//   with 4 on rows with k / 4 odd moves those to the other half of their group of 8 columns. The
//   XOR stays inside an aligned group of 8, so the fragment reads stay conflict-free; it is the same
//   for all lanes of a read, and fixed per thread for the stores (Slot keeps k / 4 mod 2).
template <bool TF32>
struct SharedTiles {
  static constexpr int STRIDE = BM + (TF32 ? 8 : 4);
  float a[BK][STRIDE];
  float b[BK][STRIDE];
};
static_assert(SharedTiles<false>::STRIDE % 4 == 0, "FFMA rows must stay 16-byte aligned for float4 reads");
static_assert(SharedTiles<true>::STRIDE % 32 == 8, "TF32 fragment rows t4 = 0..3 must land 8 banks apart");

// The shared-memory column of an operand tile's element (kk, mn).
template <bool TF32>
__device__ __forceinline__ int smem_col(int kk, int mn) {
  return TF32 ? mn ^ (kk & 4) : mn;
}

// ---- TF32 tensor cores (sm_80+): mma.sync.m16n8k8, f32 accumulation ----
//
// With TF32 each warp w of the block computes rows 16·(w / 2).. and columns 32·(w % 2).. of the
// tile as four m16n8 products; acc[t][r] is register c_r of n8-tile t, in PTX's fragment layout
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

// The tile row and column of this thread's acc[i][j].
template <bool TF32>
__device__ __forceinline__ int acc_row(int i, int j) {
  if (TF32) return (int)(threadIdx.x / 64) * 16 + (int)(threadIdx.x % 32) / 4 + (j >= 2 ? 8 : 0);
  return (int)(threadIdx.x / (BN / TN)) * TM + i;
}
template <bool TF32>
__device__ __forceinline__ int acc_col(int i, int j) {
  if (TF32) return (int)((threadIdx.x / 32) % 2) * 32 + i * 8 + (int)(threadIdx.x % 4) * 2 + (j & 1);
  return (int)(threadIdx.x % (BN / TN)) * TN + j;
}

// acc += the tile's A · B over the BK staged in shared memory, on tensor cores. ROUNDED: the tiles
// hold values rounded to TF32 already (the register-staged loop rounds on its way in); else each
// fragment element is rounded as it is read (what a cp.async copy, which cannot convert, needs).
template <bool ROUNDED = true>
__device__ __forceinline__ void tile_product_tf32(const SharedTiles<true>& s, float (&acc)[TM][TN]) {
  static_assert(TM == 4 && TN == 4 && BM == 64 && BN == 64 && THREADS == 256 && BK % 8 == 0,
                "8 warps of 16 × 32 cover the 64 × 64 tile; acc holds four n8-tiles of four registers");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int group = lane / 4, t4 = lane % 4;
  const int m = (warp / 2) * 16 + group, n = (warp % 2) * 32 + group;
  auto bits = [](float x) { return ROUNDED ? tf32_bits(x) : to_tf32(x); };
  auto a_at = [&](int kk, int mm) { return bits(s.a[kk][smem_col<true>(kk, mm)]); };
  auto b_at = [&](int kk, int nn) { return bits(s.b[kk][smem_col<true>(kk, nn)]); };
#pragma unroll
  for (int k8 = 0; k8 < BK; k8 += 8) {
    const int k = k8 + t4;
    const uint32_t a[4] = {a_at(k, m), a_at(k, m + 8), a_at(k + 4, m), a_at(k + 4, m + 8)};
#pragma unroll
    for (int t = 0; t < TM; ++t) {
      const uint32_t b[2] = {b_at(k, n + 8 * t), b_at(k + 4, n + 8 * t)};
      mma_tf32(acc[t], a, b);
    }
  }
}

// acc += the tile's A · B over the BK staged in shared memory, in FFMA: 4 × 4 per thread.
__device__ __forceinline__ void tile_product_f32(const SharedTiles<false>& s, float (&acc)[TM][TN]) {
  const int tx = threadIdx.x % (BN / TN);
  const int ty = threadIdx.x / (BN / TN);
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

// Whether a loader fetches by the slot mapping of a main loop with this TF32.
template <bool TF32, class Loader>
constexpr bool fetches_slots = std::is_same<typename Loader::Slots, Slot<Loader::K_CONTIGUOUS, TF32>>::value;

__device__ __forceinline__ void zero_accumulators(float (&acc)[TM][TN]) {
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
}

// A loader's elements at K step k0, into registers (0 outside the matrix).
template <class Loader>
__device__ __forceinline__ void load_registers(const Loader& l, int k0, float (&r)[LOADS]) {
  l.fetch(k0, [&](int i, const float* p, bool in_range) { r[i] = in_range ? *p : 0.0f; });
}

// acc = A[:, k_begin:k_end] · B[k_begin:k_end, :] for this block's tile; every thread of the block
// must call it (it synchronises). k_begin and k_end are uniform across the block. acc[i][j] is
// element (acc_row<TF32>(i, j), acc_col<TF32>(i, j)) of the tile.
template <bool TF32, class ALoader, class BLoader>
__device__ __forceinline__ void mainloop(const ALoader& a, const BLoader& b, int k_begin, int k_end,
                                         SharedTiles<TF32>& s, float (&acc)[TM][TN]) {
  using SA = typename ALoader::Slots;
  using SB = typename BLoader::Slots;
  static_assert(fetches_slots<TF32, ALoader> && fetches_slots<TF32, BLoader>,
                "the loaders must fetch what this main loop's slot mapping stores");
  zero_accumulators(acc);
  if (k_begin >= k_end) return;

  float ra[LOADS], rb[LOADS];
  load_registers(a, k_begin, ra);
  load_registers(b, k_begin, rb);
  for (int k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      s.a[SA::kk(i)][smem_col<TF32>(SA::kk(i), SA::mn(i))] = TF32 ? round_tf32(ra[i]) : ra[i];
      s.b[SB::kk(i)][smem_col<TF32>(SB::kk(i), SB::mn(i))] = TF32 ? round_tf32(rb[i]) : rb[i];
    }
    __syncthreads();
    // Fetch the next step's operands while this one is multiplied out of shared memory.
    if (k0 + BK < k_end) {
      load_registers(a, k0 + BK, ra);
      load_registers(b, k0 + BK, rb);
    }
    if constexpr (TF32) {
      tile_product_tf32(s, acc);
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
// (cp.async cannot convert). Same tiles, slots and conflict-free columns; which one is faster is
// for a GPU to say (`dpgan bench kernels`), so both are kept.
constexpr int STAGES = 3;

#ifndef DPGAN_HOST_EMULATION
// Copies one float from global to shared memory, asynchronously; out of range it writes a zero
// (a source size of 0 reads nothing and zero-fills).
__device__ __forceinline__ void cp_async_f32(float* dst, const float* src, bool in_range) {
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(d), "l"(src), "r"(in_range ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}
#endif

// acc = A[:, k_begin:k_end] · B[k_begin:k_end, :] on TF32 tensor cores through the cp.async
// pipeline; otherwise as `mainloop` (every thread of the block calls it; k_begin, k_end uniform).
template <class ALoader, class BLoader>
__device__ __forceinline__ void mainloop_cp_async(const ALoader& a, const BLoader& b, int k_begin, int k_end,
                                                  SharedTiles<true> (&s)[STAGES], float (&acc)[TM][TN]) {
  using SA = typename ALoader::Slots;
  using SB = typename BLoader::Slots;
  static_assert(fetches_slots<true, ALoader> && fetches_slots<true, BLoader>,
                "the loaders must fetch what the TF32 slot mapping stores");
  zero_accumulators(acc);
  if (k_begin >= k_end) return;
  const int steps = (k_end - k_begin + BK - 1) / BK;
  // Queues K step `step`'s copies into its stage, and commits them as one group (an empty group
  // past the last step, so that the count of groups in flight stays the same).
  auto issue = [&](int step) {
    if (step < steps) {
      SharedTiles<true>& t = s[step % STAGES];
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
    tile_product_tf32<false>(s[step % STAGES], acc);
  }
  // No copy may still be writing shared memory when the block moves on (the next z's tiles).
  cp_async_wait<0>();
  __syncthreads();
}

// The shared memory of a kernel's main loop: one stage of tiles, or the cp.async pipeline's STAGES.
template <bool TF32, bool CP_ASYNC>
using MainloopTiles = typename std::conditional<CP_ASYNC, SharedTiles<true>[STAGES], SharedTiles<TF32>>::type;

// The main loop a kernel was built for: register-staged (f32 FFMA or TF32), or TF32 through the
// cp.async pipeline.
template <bool TF32, bool CP_ASYNC, class ALoader, class BLoader>
__device__ __forceinline__ void run_mainloop(const ALoader& a, const BLoader& b, int k_begin, int k_end,
                                             MainloopTiles<TF32, CP_ASYNC>& s, float (&acc)[TM][TN]) {
  static_assert(TF32 || !CP_ASYNC, "the cp.async pipeline feeds the TF32 tensor cores");
  if constexpr (CP_ASYNC) {
    mainloop_cp_async(a, b, k_begin, k_end, s, acc);
  } else {
    mainloop<TF32>(a, b, k_begin, k_end, s, acc);
  }
}

// Writes the block's tile of C: element (m, n) with m < M and n < N goes to
// out[ep.row(m) + ep.col(n)] as ep.value(m, n, c) (c itself, or with a bias added). The epilogue
// supplies `int64_t row(int)`, `int64_t col(int)` and `float value(int, int, float)`.
template <bool TF32, class Epilogue>
__device__ __forceinline__ void store_tile(const Epilogue& ep, float* __restrict__ out, int m0, int n0, int M, int N,
                                           const float (&acc)[TM][TN]) {
  if constexpr (TF32) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int m = m0 + acc_row<true>(i, j), n = n0 + acc_col<true>(i, j);
        if (m < M && n < N) out[ep.row(m) + ep.col(n)] = ep.value(m, n, acc[i][j]);
      }
  } else {
    // A thread's columns are the same for its TM rows: their offsets are computed once.
    int64_t cols[TN];
    bool col_ok[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + acc_col<false>(0, j);
      col_ok[j] = n < N;
      cols[j] = col_ok[j] ? ep.col(n) : 0;
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int m = m0 + acc_row<false>(i, 0);
      if (m >= M) continue;
      const int64_t row = ep.row(m);
#pragma unroll
      for (int j = 0; j < TN; ++j)
        if (col_ok[j]) out[row + cols[j]] = ep.value(m, n0 + acc_col<false>(0, j), acc[i][j]);
    }
  }
}

// ---- Loaders of plain row-major matrices ----

// Element (mn, k) at ptr[mn·ld + k]: A untransposed ([M, K]) or B transposed ([N, K]).
template <bool TF32>
struct KMajorLoader {
  static constexpr bool K_CONTIGUOUS = true;
  using Slots = Slot<K_CONTIGUOUS, TF32>;
  const float* __restrict__ ptr;
  int mn0, mn_count, k_count;
  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
    using S = Slots;
    const int k = k0 + S::kk(0);  // the same k for all of a thread's loads
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      const int mn = mn0 + S::mn(i);
      const bool in_range = k < k_count && mn < mn_count;
      put(i, in_range ? ptr + (int64_t)mn * k_count + k : ptr, in_range);
    }
  }
};

// Element (mn, k) at ptr[k·ld + mn]: A transposed ([K, M]) or B untransposed ([K, N]).
template <bool TF32>
struct MNMajorLoader {
  static constexpr bool K_CONTIGUOUS = false;
  using Slots = Slot<K_CONTIGUOUS, TF32>;
  const float* __restrict__ ptr;
  int mn0, mn_count, k_count;
  template <class Put>
  __device__ __forceinline__ void fetch(int k0, Put&& put) const {
    using S = Slots;
    const int mn = mn0 + S::mn(0);  // the same m or n for all of a thread's loads
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
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
