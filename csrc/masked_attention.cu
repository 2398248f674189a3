// masked_attention: cross-attention of Lq queries over Lk keys with a bit-packed per-(query, key)
// mask, on tensor cores (mma.sync, sm_80 and later), FlashAttention-2 style: the forward saves each
// row's logsumexp, the backward recomputes the probabilities from it. The spec is
// vitpose_kernels/reference/masked_attention.py (TAR-ViTPose's JTA with a mask, its GRA without).
//
// Work decomposition. A CTA (4 warps) owns BM query rows of one (batch, head) and walks the key
// tiles (BN keys) that the mask leaves any of its rows, double-buffered with cp.async. The shapes
// are far from square (JTA: 17 queries over 5 frames of tokens; GRA: a frame's tokens over 17 keys),
// so the warps split the CTA's work two ways: WM warps along the queries (16 rows each) times WN
// along the keys (each warp takes every WN-th 16-key sub-tile of a tile), WM * WN = 4, WN chosen
// from Lq on the host. Warp columns keep separate running softmax states, merged through shared
// memory at the end in a fixed order (deterministic).
//
// Masks. A CTA first ORs its rows' mask words per key tile (one pass over them), then walks only
// the tiles with a bit set and reads only the k and v rows with a bit set (the others are zero-
// filled by cp.async without touching global memory: in TAR's JTA most tokens of a frame are seen
// by no joint); a warp also skips a 16-key sub-tile whose bits are all zero for its 16 rows. The
// dk/dv kernel reads only the query rows that see one of its keys. Skipping is exact: a masked logit is -inf, adds exp(-inf) = 0 and leaves the
// running max alone, so results do not depend on which tiles were skipped. A row without any
// allowed key outputs 0 and gets lse = +inf, which zeroes its probabilities in the backward.
//
// Backward, deterministic, no atomics: delta = rowsum(dout * out); the dq kernel uses the forward's
// decomposition (and its tile skipping); the dk/dv kernel owns 64 keys per CTA (16 per warp) and
// walks the query tiles that see them. Wide heads (padded head dim > 128) would need dk and dv
// accumulators of 2 x DP/2 floats a thread: there the kernel runs twice, once for dv, once for dk.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common.h"
#include "masked_attention_params.cuh"
#include "window_attention_mma.cuh"

namespace vitpose {
namespace ma {
namespace {

using wa::cp_async16;
using wa::cp_async_commit;
using wa::cp_async_wait;
using wa::lcol_a;
using wa::lcol_b;
using wa::ldsm_x4;
using wa::ldsm_x4_t;
using wa::lrow_a;
using wa::lrow_b;
using wa::Mma;

constexpr const char* kOp = "masked_attention";
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = 4;
constexpr int kPad = 8;   // smem rows padded by 16 bytes: ldmatrix rows hit distinct banks
constexpr int kSub = 16;  // keys (forward, dq) or queries (dk/dv) a warp takes per step
constexpr int kMaxBM = 64;
constexpr int kMaxLen = 1 << 17;  // queries or keys (vitpose_kernels/cuda_backend/masked_attention.py)

__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr size_t align16(size_t n) { return (n + 15) / 16 * 16; }
// Mask words per key tile (a 16-key tile keeps its 16 bits in the low half of one word).
__host__ __device__ constexpr int words_per_tile(int tile) { return tile >= 32 ? tile / 32 : 1; }

// Tile shapes per padded head dim DP, chosen so that shared memory stays under A100's 163 KB.
template <int DP>
struct Cfg {
  static constexpr int LD = DP + kPad;                            // smem row stride (elements)
  static constexpr int LDO = DP + 4;                              // fp32 partial-result row stride
  static constexpr int BN_FWD = DP <= 128 ? 64 : 32;              // keys per forward tile
  static constexpr int BN_DQ = DP <= 128 ? 64 : (DP <= 256 ? 32 : 16);  // keys per dq tile
  static constexpr int BQ = DP <= 128 ? 64 : (DP <= 256 ? 32 : 16);     // queries per dk/dv tile
  static constexpr int KB = 16 * kWarps;                          // keys per dk/dv CTA
  static constexpr bool kSplitDkv = DP > 128;                     // dv and dk in two passes
};

// Shared memory of the query-block kernels (forward: ops = 1 (Q); dq: 2 (Q, dO)): the double-buffered
// K/V tiles, then the query rows; after the tile loop the warp columns' fp32 partial results
// (64 rows x LDO) overlay both. Then per-row statistics, the rows' mask words of the two buffered
// tiles, and per key tile the OR of the rows' words.
template <typename T, int DP>
struct QueryLayout {
  int BN, ops, nt;
  __host__ __device__ size_t kv() const { return size_t(4) * BN * Cfg<DP>::LD * sizeof(T); }
  __host__ __device__ size_t tiles() const {
    const size_t part = size_t(kMaxBM) * Cfg<DP>::LDO * sizeof(float);
    const size_t in = kv() + size_t(ops) * kMaxBM * Cfg<DP>::LD * sizeof(T);
    return in > part ? in : part;
  }
  __host__ __device__ size_t bytes() const {
    return tiles() + 4 * kMaxBM * sizeof(float) + 2 * kMaxBM * words_per_tile(BN) * sizeof(uint32_t) +
           align16(size_t(nt) * words_per_tile(BN) * sizeof(uint32_t));
  }
};

// Shared memory of the dk/dv kernel.
template <typename T, int DP>
struct KeyLayout {
  int nu;
  static constexpr size_t tiles() { return size_t(2 * Cfg<DP>::KB + 4 * Cfg<DP>::BQ) * Cfg<DP>::LD * sizeof(T); }
  static constexpr size_t stats() {
    return size_t(2) * Cfg<DP>::BQ * (2 * sizeof(float) + 2 * sizeof(uint32_t)) + (2 * kWarps + 2) * sizeof(uint32_t);
  }
  __host__ __device__ size_t bytes() const { return tiles() + stats() + align16(nu); }
};

// ============================================================================ the mask
// One (batch, head) of the mask, or none (every existing key allowed).
struct MaskRef {
  const int32_t* base;
  int64_t sq;
  int Lq, Lk;
};

__device__ __forceinline__ MaskRef mask_of(const Params& p, int b, int h) {
  return MaskRef{p.mask ? p.mask + b * p.msb + h * p.msh : nullptr, p.msq, p.Lq, p.Lk};
}

// Word w of query row i: bit j = key 32*w + j allowed, with keys >= Lk (and rows >= Lq) cleared,
// so that whatever a packed mask holds past Lk never counts.
__device__ __forceinline__ uint32_t mask_word(const MaskRef& m, int i, int w) {
  const int keys = m.Lk - w * 32;
  if (i >= m.Lq || keys <= 0) return 0u;
  const uint32_t valid = keys >= 32 ? 0xffffffffu : (1u << keys) - 1u;
  if (!m.base) return valid;
  return static_cast<uint32_t>(__ldg(m.base + i * m.sq + w)) & valid;
}

// The 16 bits of keys n..n+15 (n a multiple of 16) for query row i.
__device__ __forceinline__ uint32_t mask_bits16(const MaskRef& m, int i, int n) {
  return (mask_word(m, i, n >> 5) >> (n & 31)) & 0xffffu;
}

// The bits of tile t (TILE keys) for query row i: words_per_tile(TILE) words.
template <int TILE>
__device__ __forceinline__ uint32_t tile_word(const MaskRef& m, int i, int t, int w) {
  if constexpr (TILE >= 32) {
    return mask_word(m, i, t * (TILE / 32) + w);
  } else {
    return mask_bits16(m, i, t * 16);
  }
}

__device__ __forceinline__ uint32_t warp_or(uint32_t x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x |= __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// bits[t * WPT + w] = the keys of tile t (t < nt) that any of the `rows` query rows from r0 may
// attend to: whether the tile is needed at all, and which of its k and v rows must be read.
// Warp w takes the tiles w, w + 4, ...; its lanes split the rows.
template <int TILE>
__device__ __forceinline__ void key_tile_bits(uint32_t* bits, int nt, const MaskRef& m, int r0, int rows) {
  constexpr int WPT = words_per_tile(TILE);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int t = warp; t < nt; t += kWarps) {
#pragma unroll
    for (int w = 0; w < WPT; ++w) {
      uint32_t any = 0;
      for (int i = lane; i < rows; i += 32) any |= tile_word<TILE>(m, r0 + i, t, w);
      any = warp_or(any);
      if (lane == 0) bits[t * WPT + w] = any;
    }
  }
}

template <int WPT>
__device__ __forceinline__ bool tile_needed(const uint32_t* bits, int t) {
  uint32_t any = 0;
#pragma unroll
  for (int w = 0; w < WPT; ++w) any |= bits[t * WPT + w];
  return any != 0;
}

// The next needed key tile after t (nt if none). Every thread reads the same bits: uniform.
template <int WPT>
__device__ __forceinline__ int next_key_tile(const uint32_t* bits, int t, int nt) {
  do {
    ++t;
  } while (t < nt && !tile_needed<WPT>(bits, t));
  return t;
}

// The `rows` (<= kMaxBM) rows' mask words of key tile t into dst[row][WPT], with the tile's K/V
// copies (plain stores: visible to the CTA after the barrier that makes the copies visible). At
// most one word per thread, so no loop: a strided loop here had its unrolled iterations' indices
// hoisted out of the key-tile loop by ptxas and spilled (fwd<32> on sm_80, dq<128>).
template <int TILE>
__device__ __forceinline__ void stage_tile_words(uint32_t* dst, const MaskRef& m, int r0, int rows, int t) {
  constexpr int WPT = words_per_tile(TILE);
  static_assert(kMaxBM * WPT <= kThreads, "one mask word per thread");
  const int i = threadIdx.x;
  if (i < rows * WPT) dst[i] = tile_word<TILE>(m, r0 + i / WPT, t, i % WPT);
}

// The 16 bits of 16-key sub-tile `sub` for row `row` of the staged tile words.
template <int TILE>
__device__ __forceinline__ uint32_t sub_tile_bits(const uint32_t* words, int row, int sub) {
  constexpr int WPT = words_per_tile(TILE);
  return (words[row * WPT + ((sub * kSub) >> 5)] >> ((sub * kSub) & 31)) & 0xffffu;
}

// The next flagged query tile after u (nu if none).
__device__ __forceinline__ int next_tile(const unsigned char* flags, int u, int nu) {
  do {
    ++u;
  } while (u < nu && !flags[u]);
  return u;
}

// ============================================================================ tiles and fragments
template <typename T>
__device__ __forceinline__ const T* bh_ptr(const Operand& o, int b, int h) {
  return static_cast<const T*>(o.ptr) + b * o.sb + h * o.sh;
}

struct AllRows {
  __device__ __forceinline__ bool operator()(int) const { return true; }
};

// Rows r0..r0+rows-1 of a (n, D) operand (row stride sn) into a padded smem tile [rows][DP + kPad],
// 16 bytes per cp.async; rows past n, rows r with !need(r) and columns past D are zero-filled and
// never read from global memory (a masked key nobody attends to costs no bandwidth). A thread keeps
// one 16-byte column and steps over rows: the flat (row, column) loop this replaces had every
// unrolled step's division by DP / 8 hoisted out of the callers' tile loops, registers held for
// the whole kernel. Where DP / 8 does not divide 128 (DP 96, 192, 320) the last threads idle.
template <typename T, int DP, typename Need = AllRows>
__device__ __forceinline__ void load_rows(T* s, const T* base, int64_t sn, int r0, int rows, int n, int D,
                                          const Need& need = Need()) {
  constexpr int kChunks = DP / 8, kRowsPerPass = kThreads / kChunks;
  static_assert(kRowsPerPass >= 1, "a row's chunks fit in one pass of the CTA");
  if (static_cast<int>(threadIdx.x) >= kRowsPerPass * kChunks) return;
  const int ch = threadIdx.x % kChunks;
  for (int r = threadIdx.x / kChunks; r < rows; r += kRowsPerPass) {
    const bool ok = r0 + r < n && ch * 8 < D && need(r);
    cp_async16(s + r * (DP + kPad) + ch * 8, ok ? base + static_cast<int64_t>(r0 + r) * sn + ch * 8 : base, ok);
  }
}

// need(r) for row r of a key tile: bit r of the tile's words.
struct BitRows {
  const uint32_t* words;
  __device__ __forceinline__ bool operator()(int r) const { return (words[r >> 5] >> (r & 31)) & 1u; }
};

// Rows of a padded smem tile out to rows r0.. of a contiguous (n, D) destination, 16 bytes a store.
template <typename T, int DP>
__device__ __forceinline__ void store_rows(T* dst, const T* s, int r0, int rows, int n, int D) {
  constexpr int kChunks = DP / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c - r * kChunks;
    if (r0 + r < n && ch * 8 < D)
      *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r0 + r) * D + ch * 8) =
          *reinterpret_cast<const uint4*>(s + r * (DP + kPad) + ch * 8);
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
}

// f(j, e, col, r) for every element of a warp's 16 x 16 product (two n8 C fragments,
// window_attention_mma.cuh): its column in the product and its thread row r (g + 8r).
template <typename F>
__device__ __forceinline__ void for_each_elem(int tq, const F& f) {
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) f(j, e, j * 8 + 2 * tq + (e & 1), e >> 1);
  }
}

// S = A B^T over the head dim: A the 16 rows at a, B the 16 rows at b (padded tiles). The A
// fragments are reloaded per step rather than kept: at head dims up to 320 the registers go to
// the DP-wide accumulator.
template <typename T, int DP>
__device__ __forceinline__ void mma_abt16(float (&s)[2][4], const T* a, const T* b, int lane) {
  constexpr int LD = DP + kPad;
  [[maybe_unused]] constexpr int kUnroll = DP > 128 ? 4 : DP / 16;  // wide heads: fewer loads in flight
  zero(s);
#pragma unroll kUnroll
  for (int kk = 0; kk < DP / 16; ++kk) {
    uint32_t af[4], bf[4];
    ldsm_x4(af, a + lrow_a(lane) * LD + kk * 16 + lcol_a(lane));
    ldsm_x4(bf, b + lrow_b(lane) * LD + kk * 16 + lcol_b(lane));
    Mma<T>::run(s[0], af, bf[0], bf[1]);
    Mma<T>::run(s[1], af, bf[2], bf[3]);
  }
}

// acc (16 x DP) += P B: P the warp's 16 x 16 C fragments, rounded to T, which are exactly the A
// fragment of this product (window_attention_mma.cuh); B the 16 rows at b (k = row, n = column).
template <typename T, int DP>
__device__ __forceinline__ void mma_acc_pb16(float (&acc)[DP / 8][4], const float (&pc)[2][4], const T* b, int lane) {
  constexpr int LD = DP + kPad;
  uint32_t a[4];
  a[0] = Mma<T>::pack(pc[0][0], pc[0][1]);
  a[1] = Mma<T>::pack(pc[0][2], pc[0][3]);
  a[2] = Mma<T>::pack(pc[1][0], pc[1][1]);
  a[3] = Mma<T>::pack(pc[1][2], pc[1][3]);
#pragma unroll
  for (int dd = 0; dd < DP / 16; ++dd) {
    uint32_t bf[4];
    ldsm_x4_t(bf, b + lrow_a(lane) * LD + dd * 16 + lcol_a(lane));
    Mma<T>::run(acc[2 * dd], a, bf[0], bf[1]);
    Mma<T>::run(acc[2 * dd + 1], a, bf[2], bf[3]);
  }
}

// One 16-key step of the online softmax (logits s in log2 units, -inf where masked, turned into
// their exponentials): running row max m and sum l, accumulator o rescaled to the new max. A row's
// 4 lanes (a quad) share its max; l stays per lane until the end.
template <int DP>
__device__ __forceinline__ void online_softmax16(float (&s)[2][4], float (&o)[DP / 8][4], float (&m)[2], float (&l)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = fmaxf(fmaxf(s[0][2 * r], s[0][2 * r + 1]), fmaxf(s[1][2 * r], s[1][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[r], mx);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with no key yet: avoid inf - inf
    const float alpha = exp2f(m[r] - m_use);
    m[r] = m_new;
    l[r] *= alpha;
#pragma unroll
    for (int j = 0; j < DP / 8; ++j) {
      o[j][2 * r] *= alpha;
      o[j][2 * r + 1] *= alpha;
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      s[j][2 * r] = exp2f(s[j][2 * r] - m_use);
      s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - m_use);
      l[r] += s[j][2 * r] + s[j][2 * r + 1];
    }
  }
}

// A warp's 16 x DP fp32 accumulator into rows row0.. of an fp32 smem tile (row stride LDO), times f[r].
template <int DP>
__device__ __forceinline__ void stage_f32(float* s, const float (&acc)[DP / 8][4], int row0, const float (&f)[2]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int j = 0; j < DP / 8; ++j) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float* dst = s + (row0 + g + 8 * r) * Cfg<DP>::LDO + j * 8 + 2 * tq;
      dst[0] = acc[j][2 * r] * f[r];
      dst[1] = acc[j][2 * r + 1] * f[r];
    }
  }
}

// A warp's 16 x DP accumulator, times mul, rounded to T into rows row0.. of a padded smem tile.
template <typename T, int DP>
__device__ __forceinline__ void stage_acc(T* s, const float (&acc)[DP / 8][4], int row0, float mul) {
  const int lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int j = 0; j < DP / 8; ++j) {
    T* p0 = s + (row0 + g) * (DP + kPad) + j * 8 + 2 * tq;
    *reinterpret_cast<uint32_t*>(p0) = Mma<T>::pack(acc[j][0] * mul, acc[j][1] * mul);
    *reinterpret_cast<uint32_t*>(p0 + 8 * (DP + kPad)) = Mma<T>::pack(acc[j][2] * mul, acc[j][3] * mul);
  }
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Sum the WN warp columns' fp32 partial rows (fixed order), times the row's factor, into rows m0..
// of a contiguous (Lq, D) output. Coalesced: consecutive threads take consecutive columns.
template <typename T, int DP>
__device__ __forceinline__ void reduce_columns(T* dst, const float* part, const float* row_mul, int m0, int BM,
                                               int WN, int Lq, int D) {
  for (int idx = threadIdx.x; idx < BM * D; idx += kThreads) {
    const int row = idx / D, d = idx - row * D;
    if (m0 + row >= Lq) continue;
    float acc = 0.f;
    for (int w = 0; w < WN; ++w) acc += part[(w * BM + row) * Cfg<DP>::LDO + d];
    dst[static_cast<int64_t>(m0 + row) * D + d] = from_float<T>(acc * row_mul[row]);
  }
}

// Double buffering: issue tile tn's copies into the other buffer, then wait for the current tile's
// group only (cp.async groups retire in order) and make it visible to the whole CTA.
template <typename Load>
__device__ __forceinline__ void prefetch_and_wait(int tn, int nt, int next_buf, const Load& load) {
  if (tn < nt) {
    load(tn, next_buf);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// ============================================================================ forward
// The forward and dq kernels are __launch_bounds__(kThreads, 1), as window_attention's: with the
// thread count alone ptxas picked a register target of its own (128 on sm_90a, 72 or 80 on sm_80)
// and spilled a few words to meet it (fwd<32>, dq<128>; fwd<64>, dq<64>, dq<96> once load_rows
// freed registers). Their shared memory, not registers, caps their CTAs per SM (RESOURCES.md).
// The dk/dv kernel keeps the plain bound: spill-free with it, and with the hint its DP 32 instance
// took 105 registers (4 CTAs per SM on sm_90a where its shared memory allows 6).
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads, 1) ma_fwd_kernel(const Params p, const int WN) {
  using C = Cfg<DP>;
  constexpr int LD = C::LD, BN = C::BN_FWD;
  const int WM = kWarps / WN, BM = 16 * WM, nt = cdiv(p.Lk, BN);
  const QueryLayout<T, DP> lay{BN, 1, nt};
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [2][BN][LD]
  T* sV = sK + 2 * BN * LD;                // [2][BN][LD]
  T* sQ = sV + 2 * BN * LD;                // [64][LD]
  float* sPart = reinterpret_cast<float*>(smem_raw);  // after the loop: [WN][BM][LDO] over all of the above
  constexpr int WPT = words_per_tile(BN);
  float* sStat = reinterpret_cast<float*>(smem_raw + lay.tiles());  // [4][64]
  uint32_t* sMask = reinterpret_cast<uint32_t*>(sStat + 4 * kMaxBM);  // [2][64][WPT] the rows' words of a tile
  uint32_t* sTile = sMask + 2 * kMaxBM * WPT;                         // [nt][WPT] keys needed per tile

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * BM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int wm = warp % WM, wn = warp / WM;
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  const T* q_bh = bh_ptr<T>(p.q, b, h);
  const T* k_bh = bh_ptr<T>(p.k, b, h);
  const T* v_bh = bh_ptr<T>(p.v, b, h);
  const MaskRef mr = mask_of(p, b, h);

  key_tile_bits<BN>(sTile, nt, mr, m0, min(BM, p.Lq - m0));
  __syncthreads();
  auto load_kv = [&](int tile, int buf) {
    const BitRows need{sTile + tile * WPT};
    load_rows<T, DP>(sK + buf * BN * LD, k_bh, p.k.sn, tile * BN, BN, p.Lk, p.D, need);
    load_rows<T, DP>(sV + buf * BN * LD, v_bh, p.v.sn, tile * BN, BN, p.Lk, p.D, need);
    stage_tile_words<BN>(sMask + buf * kMaxBM * WPT, mr, m0, BM, tile);
  };
  int t = next_key_tile<WPT>(sTile, -1, nt);
  if (t < nt) {
    load_rows<T, DP>(sQ, q_bh, p.q.sn, m0, BM, p.Lq, p.D);
    load_kv(t, 0);
    cp_async_commit();
  }

  const int qrow = m0 + wm * 16 + g;  // the thread's query rows: qrow, qrow + 8
  const float scale_log2 = p.scale * kLog2e;
  float o[DP / 8][4];
  zero(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int it = 0; t < nt; ++it) {
    const int tn = next_key_tile<WPT>(sTile, t, nt), buf = it & 1;
    prefetch_and_wait(tn, nt, buf ^ 1, load_kv);
    for (int sub = wn; sub < BN / kSub; sub += WN) {
      const int n = t * BN + sub * kSub;
      if (n >= p.Lk) break;
      const uint32_t bits[2] = {sub_tile_bits<BN>(sMask + buf * kMaxBM * WPT, qrow - m0, sub),
                                sub_tile_bits<BN>(sMask + buf * kMaxBM * WPT, qrow + 8 - m0, sub)};
      if (!__any_sync(0xffffffffu, (bits[0] | bits[1]) != 0)) continue;  // all 16 x 16 pairs masked
      float s[2][4];
      mma_abt16<T, DP>(s, sQ + wm * 16 * LD, sK + (buf * BN + sub * kSub) * LD, lane);
      for_each_elem(tq, [&](int j, int e, int col, int r) {
        s[j][e] = (bits[r] >> col) & 1u ? s[j][e] * scale_log2 : -INFINITY;
      });
      online_softmax16<DP>(s, o, m, l);
      mma_acc_pb16<T, DP>(o, s, sV + (buf * BN + sub * kSub) * LD, lane);
    }
    __syncthreads();  // the buffer just read is the next prefetch's target
    t = tn;
  }

  // Merge the warp columns: per row the common max, the total sum, lse; then the partial outputs
  // rescaled to the common max are summed in column order.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    if (tq == 0) {
      sStat[wn * BM + wm * 16 + g + 8 * r] = m[r];
      sStat[kMaxBM + wn * BM + wm * 16 + g + 8 * r] = l[r];
    }
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < BM) {
    const int row = threadIdx.x;
    float mt = -INFINITY;
    for (int w = 0; w < WN; ++w) mt = fmaxf(mt, sStat[w * BM + row]);
    const float mu = mt == -INFINITY ? 0.f : mt;
    float lt = 0.f;
    for (int w = 0; w < WN; ++w) lt += sStat[kMaxBM + w * BM + row] * exp2f(sStat[w * BM + row] - mu);
    sStat[2 * kMaxBM + row] = mu;
    sStat[3 * kMaxBM + row] = lt > 0.f ? 1.f / lt : 0.f;
    if (m0 + row < p.Lq) p.lse[bh * p.Lq + m0 + row] = lt > 0.f ? (mt + log2f(lt)) * kLn2 : INFINITY;
  }
  __syncthreads();
  float f[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) f[r] = exp2f(m[r] - sStat[2 * kMaxBM + wm * 16 + g + 8 * r]);  // 0 for m = -inf
  stage_f32<DP>(sPart + wn * BM * C::LDO, o, wm * 16, f);
  __syncthreads();
  reduce_columns<T, DP>(static_cast<T*>(p.out) + bh * p.Lq * p.D, sPart, sStat + 3 * kMaxBM, m0, BM, WN, p.Lq, p.D);
}

// ============================================================================ backward: delta
// delta[row] = sum_d dout[row, d] * out[row, d], the softmax-gradient row term of FA-2.
template <typename T>
__global__ void __launch_bounds__(kThreads) ma_delta_kernel(const Params p) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.Lq;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const int i = static_cast<int>(row % p.Lq);
  const int64_t bhi = row / p.Lq;
  const int b = static_cast<int>(bhi / p.H), h = static_cast<int>(bhi % p.H);
  const T* o = static_cast<const T*>(p.out) + row * p.D;
  const T* d = bh_ptr<T>(p.dout, b, h) + i * p.dout.sn;
  float acc = 0.f;
  for (int c = lane; c < p.D; c += 32) acc += Mma<T>::to_float(o[c]) * Mma<T>::to_float(d[c]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) p.delta[row] = acc;
}

// ============================================================================ backward: dq
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads, 1) ma_dq_kernel(const Params p, const int WN) {
  using C = Cfg<DP>;
  constexpr int LD = C::LD, BN = C::BN_DQ;
  const int WM = kWarps / WN, BM = 16 * WM, nt = cdiv(p.Lk, BN);
  const QueryLayout<T, DP> lay{BN, 2, nt};
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [2][BN][LD]
  T* sV = sK + 2 * BN * LD;                // [2][BN][LD]
  T* sQ = sV + 2 * BN * LD;                // [64][LD]
  T* sdO = sQ + kMaxBM * LD;               // [64][LD]
  float* sPart = reinterpret_cast<float*>(smem_raw);  // after the loop: [WN][BM][LDO] over all of the above
  constexpr int WPT = words_per_tile(BN);
  float* sStat = reinterpret_cast<float*>(smem_raw + lay.tiles());  // [64] row factors
  uint32_t* sMask = reinterpret_cast<uint32_t*>(sStat + 4 * kMaxBM);  // [2][64][WPT] the rows' words of a tile
  uint32_t* sTile = sMask + 2 * kMaxBM * WPT;                         // [nt][WPT] keys needed per tile

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * BM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int wm = warp % WM, wn = warp / WM;
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  const T* q_bh = bh_ptr<T>(p.q, b, h);
  const T* k_bh = bh_ptr<T>(p.k, b, h);
  const T* v_bh = bh_ptr<T>(p.v, b, h);
  const T* do_bh = bh_ptr<T>(p.dout, b, h);
  const MaskRef mr = mask_of(p, b, h);

  key_tile_bits<BN>(sTile, nt, mr, m0, min(BM, p.Lq - m0));
  __syncthreads();
  auto load_kv = [&](int tile, int buf) {
    const BitRows need{sTile + tile * WPT};
    load_rows<T, DP>(sK + buf * BN * LD, k_bh, p.k.sn, tile * BN, BN, p.Lk, p.D, need);
    load_rows<T, DP>(sV + buf * BN * LD, v_bh, p.v.sn, tile * BN, BN, p.Lk, p.D, need);
    stage_tile_words<BN>(sMask + buf * kMaxBM * WPT, mr, m0, BM, tile);
  };
  int t = next_key_tile<WPT>(sTile, -1, nt);
  if (t < nt) {
    load_rows<T, DP>(sQ, q_bh, p.q.sn, m0, BM, p.Lq, p.D);
    load_rows<T, DP>(sdO, do_bh, p.dout.sn, m0, BM, p.Lq, p.D);
    load_kv(t, 0);
    cp_async_commit();
  }

  const int qrow = m0 + wm * 16 + g;
  float lse2[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = qrow + 8 * r < p.Lq;
    lse2[r] = ok ? p.lse[bh * p.Lq + qrow + 8 * r] * kLog2e : INFINITY;
    dlt[r] = ok ? p.delta[bh * p.Lq + qrow + 8 * r] : 0.f;
  }
  const float scale_log2 = p.scale * kLog2e;
  float dq[DP / 8][4];
  zero(dq);

  for (int it = 0; t < nt; ++it) {
    const int tn = next_key_tile<WPT>(sTile, t, nt), buf = it & 1;
    prefetch_and_wait(tn, nt, buf ^ 1, load_kv);
    for (int sub = wn; sub < BN / kSub; sub += WN) {
      const int n = t * BN + sub * kSub;
      if (n >= p.Lk) break;
      const uint32_t bits[2] = {sub_tile_bits<BN>(sMask + buf * kMaxBM * WPT, qrow - m0, sub),
                                sub_tile_bits<BN>(sMask + buf * kMaxBM * WPT, qrow + 8 - m0, sub)};
      if (!__any_sync(0xffffffffu, (bits[0] | bits[1]) != 0)) continue;
      const T* tK = sK + (buf * BN + sub * kSub) * LD;
      float s[2][4], dp[2][4];
      mma_abt16<T, DP>(s, sQ + wm * 16 * LD, tK, lane);                              // S = Q K^T
      mma_abt16<T, DP>(dp, sdO + wm * 16 * LD, sV + (buf * BN + sub * kSub) * LD, lane);  // dP = dO V^T
      for_each_elem(tq, [&](int j, int e, int col, int r) {
        const float pr = (bits[r] >> col) & 1u ? exp2f(s[j][e] * scale_log2 - lse2[r]) : 0.f;
        s[j][e] = pr * (dp[j][e] - dlt[r]);  // dS
      });
      mma_acc_pb16<T, DP>(dq, s, tK, lane);  // dQ += dS K
    }
    __syncthreads();
    t = tn;
  }

  const float one[2] = {1.f, 1.f};
  stage_f32<DP>(sPart + wn * BM * C::LDO, dq, wm * 16, one);
  if (static_cast<int>(threadIdx.x) < BM) sStat[threadIdx.x] = p.scale;
  __syncthreads();
  reduce_columns<T, DP>(static_cast<T*>(p.dq) + bh * p.Lq * p.D, sPart, sStat, m0, BM, WN, p.Lq, p.D);
}

// ============================================================================ backward: dk, dv
enum DkvMode : int { kBoth = 0, kDvOnly = 1, kDkOnly = 2 };

template <typename T, int DP, int kMode>
__global__ void __launch_bounds__(kThreads) ma_dkv_kernel(const Params p) {
  using C = Cfg<DP>;
  constexpr int LD = C::LD, KB = C::KB, BQ = C::BQ;
  constexpr bool kDv = kMode != kDkOnly, kDk = kMode != kDvOnly;
  const int nu = cdiv(p.Lq, BQ);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [KB][LD]
  T* sV = sK + KB * LD;                    // [KB][LD]
  T* sQ = sV + KB * LD;                    // [2][BQ][LD]
  T* sdO = sQ + 2 * BQ * LD;               // [2][BQ][LD]
  float* sLse = reinterpret_cast<float*>(sdO + 2 * BQ * LD);  // [2][BQ], log2 units
  float* sDlt = sLse + 2 * BQ;                                // [2][BQ]
  uint32_t* sMw = reinterpret_cast<uint32_t*>(sDlt + 2 * BQ);  // [2][BQ][2] the rows' words of this key block
  uint32_t* sSeen = sMw + 4 * BQ;  // [4 warps + 1][2]: the block's keys some query may attend to
  unsigned char* sFlag = reinterpret_cast<unsigned char*>(sSeen + 2 * kWarps + 2);  // [nu]

  const int b = blockIdx.z, h = blockIdx.y, n0 = blockIdx.x * KB;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  const T* q_bh = bh_ptr<T>(p.q, b, h);
  const T* do_bh = bh_ptr<T>(p.dout, b, h);
  const MaskRef mr = mask_of(p, b, h);
  const int w0 = n0 >> 5;  // KB = 64 keys: mask words w0 and w0 + 1

  // Query tiles with any query that may attend to a key of this block, and the block's keys that
  // any query may attend to (the only k and v rows read).
  uint32_t seen[2] = {0u, 0u};
  for (int u = warp; u < nu; u += kWarps) {
    uint32_t any = 0;
    for (int i = lane; i < BQ; i += 32) {
      const uint32_t a = mask_word(mr, u * BQ + i, w0), b2 = mask_word(mr, u * BQ + i, w0 + 1);
      seen[0] |= a;
      seen[1] |= b2;
      any |= a | b2;
    }
    any = warp_or(any);
    if (lane == 0) sFlag[u] = any != 0;
  }
  seen[0] = warp_or(seen[0]);
  seen[1] = warp_or(seen[1]);
  if (lane == 0) {
    sSeen[warp * 2] = seen[0];
    sSeen[warp * 2 + 1] = seen[1];
  }
  __syncthreads();
  if (threadIdx.x < 2) {
    uint32_t all = 0;
    for (int w = 0; w < kWarps; ++w) all |= sSeen[w * 2 + threadIdx.x];
    sSeen[2 * kWarps + threadIdx.x] = all;
  }
  __syncthreads();
  const BitRows key_needed{sSeen + 2 * kWarps};  // bit r: key n0 + r
  // A query tile: its rows' mask words of this key block first (a barrier makes them visible),
  // then only the q and dO rows that may attend to one of the block's keys are read.
  auto load_q = [&](int u, int buf) {
    if (threadIdx.x < BQ) {
      const int i = u * BQ + threadIdx.x;
      const bool ok = i < p.Lq;
      sLse[buf * BQ + threadIdx.x] = ok ? p.lse[bh * p.Lq + i] * kLog2e : INFINITY;
      sDlt[buf * BQ + threadIdx.x] = ok ? p.delta[bh * p.Lq + i] : 0.f;
      sMw[(buf * BQ + threadIdx.x) * 2] = mask_word(mr, i, w0);
      sMw[(buf * BQ + threadIdx.x) * 2 + 1] = mask_word(mr, i, w0 + 1);
    }
    __syncthreads();
    const uint32_t* words = sMw + buf * BQ * 2;
    const auto need = [&](int r) { return (words[2 * r] | words[2 * r + 1]) != 0; };
    load_rows<T, DP>(sQ + buf * BQ * LD, q_bh, p.q.sn, u * BQ, BQ, p.Lq, p.D, need);
    load_rows<T, DP>(sdO + buf * BQ * LD, do_bh, p.dout.sn, u * BQ, BQ, p.Lq, p.D, need);
  };
  int u = next_tile(sFlag, -1, nu);
  if (u < nu) {
    load_rows<T, DP>(sK, bh_ptr<T>(p.k, b, h), p.k.sn, n0, KB, p.Lk, p.D, key_needed);
    load_rows<T, DP>(sV, bh_ptr<T>(p.v, b, h), p.v.sn, n0, KB, p.Lk, p.D, key_needed);
    load_q(u, 0);
    cp_async_commit();
  }

  // The thread's keys (rows of S^T): warp * 16 + g + 8r of the block, bit kbit[r] of word kword[r].
  int kword[2], kbit[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int kr = warp * 16 + g + 8 * r;
    kword[r] = kr >> 5;
    kbit[r] = kr & 31;
  }
  const float scale_log2 = p.scale * kLog2e;
  [[maybe_unused]] float dk[DP / 8][4], dv[DP / 8][4];
  if constexpr (kDk) zero(dk);
  if constexpr (kDv) zero(dv);

  for (int it = 0; u < nu; ++it) {
    const int un = next_tile(sFlag, u, nu), buf = it & 1;
    prefetch_and_wait(un, nu, buf ^ 1, load_q);
    for (int sub = 0; sub < BQ / kSub; ++sub) {
      const int i0 = u * BQ + sub * kSub;
      if (i0 >= p.Lq) break;
      const int c0 = buf * BQ + sub * kSub;  // the step's first row in the tile buffers
      // allowed(key row r, query column col) for the thread's 2 x 4 elements of each n8 tile
      uint32_t bits = 0;
      for_each_elem(tq, [&](int j, int e, int col, int r) {
        bits |= ((sMw[(c0 + col) * 2 + kword[r]] >> kbit[r]) & 1u) << (j * 4 + e);
      });
      if (!__any_sync(0xffffffffu, bits != 0)) continue;
      const T* tQ = sQ + c0 * LD;
      const T* tdO = sdO + c0 * LD;
      float s[2][4];
      [[maybe_unused]] float dp[2][4];
      mma_abt16<T, DP>(s, sK + warp * 16 * LD, tQ, lane);  // S^T = K Q^T
      if constexpr (kDk) mma_abt16<T, DP>(dp, sV + warp * 16 * LD, tdO, lane);  // dP^T = V dO^T
      for_each_elem(tq, [&](int j, int e, int col, int r) {
        s[j][e] = (bits >> (j * 4 + e)) & 1u ? exp2f(s[j][e] * scale_log2 - sLse[c0 + col]) : 0.f;  // P^T
        if constexpr (kDk) dp[j][e] = s[j][e] * (dp[j][e] - sDlt[c0 + col]);                            // dS^T
      });
      if constexpr (kDv) mma_acc_pb16<T, DP>(dv, s, tdO, lane);  // dV += P^T dO
      if constexpr (kDk) mma_acc_pb16<T, DP>(dk, dp, tQ, lane);  // dK += dS^T Q
    }
    __syncthreads();
    u = un;
  }

  if constexpr (kDk) stage_acc<T, DP>(sK, dk, warp * 16, p.scale);
  if constexpr (kDv) stage_acc<T, DP>(sV, dv, warp * 16, 1.f);
  __syncthreads();
  if constexpr (kDk) store_rows<T, DP>(static_cast<T*>(p.dk) + bh * p.Lk * p.D, sK, n0, KB, p.Lk, p.D);
  if constexpr (kDv) store_rows<T, DP>(static_cast<T*>(p.dv) + bh * p.Lk * p.D, sV, n0, KB, p.Lk, p.D);
}

// ============================================================================ host side
void fail(const std::string& what) { throw std::invalid_argument(std::string("vitpose_kernels.") + kOp + ": " + what); }

void check_operand(const char* name, const Operand& o) {
  if (!o.ptr) fail(std::string(name) + " is null");
  if (reinterpret_cast<std::uintptr_t>(o.ptr) % 16 || o.sb % 8 || o.sh % 8 || o.sn % 8)
    fail(std::string(name) + ": rows must be 16-byte aligned (pointer and strides multiples of 8 elements)");
}

void check_common(const Params& p) {
  if (p.B < 1 || p.H < 1 || p.B > 65535 || p.H > 65535) fail("need 1 <= B, H <= 65535");
  // The per-CTA tile flags live in shared memory: one byte per 16..64 keys or queries.
  if (p.Lq < 1 || p.Lk < 1 || p.Lq > kMaxLen || p.Lk > kMaxLen) fail("need 1 <= Lq, Lk <= 131072");
  if (p.D < 8 || p.D > 320 || p.D % 8) fail("head dim must be a multiple of 8 in [8, 320]");
  if (p.mask && (p.msb < 0 || p.msh < 0 || p.msq < 0)) fail("mask strides must be >= 0");
  check_operand("q", p.q);
  check_operand("k", p.k);
  check_operand("v", p.v);
  if (!p.lse) fail("lse is required");
}

// Warp columns along the keys: 4 for up to 16 queries (JTA's 17 joints take 2), 1 from 33 on.
int key_columns(int Lq, int bn) {
  const int want = Lq <= 16 ? 4 : (Lq <= 32 ? 2 : 1);
  return want < bn / kSub ? want : bn / kSub;
}

dim3 grid_of(const Params& p, int64_t blocks) {
  if (blocks < 1 || blocks > 0x7fffffff) fail("bad launch size");
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  VITPOSE_CUDA_CHECK(kOp, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes)));
}

template <typename T, int DP>
void launch_forward(const Params& p, cudaStream_t stream) {
  constexpr int BN = Cfg<DP>::BN_FWD;
  const int wn = key_columns(p.Lq, BN);
  const size_t smem = QueryLayout<T, DP>{BN, 1, cdiv(p.Lk, BN)}.bytes();
  set_smem(ma_fwd_kernel<T, DP>, smem);
  ma_fwd_kernel<T, DP><<<grid_of(p, cdiv(p.Lq, 16 * (kWarps / wn))), kThreads, smem, stream>>>(p, wn);
  check_launch(kOp);
}

template <typename T, int DP, int kMode>
void launch_dkv(const Params& p, cudaStream_t stream) {
  const size_t smem = KeyLayout<T, DP>{cdiv(p.Lq, Cfg<DP>::BQ)}.bytes();
  set_smem(ma_dkv_kernel<T, DP, kMode>, smem);
  ma_dkv_kernel<T, DP, kMode><<<grid_of(p, cdiv(p.Lk, Cfg<DP>::KB)), kThreads, smem, stream>>>(p);
  check_launch(kOp);
}

template <typename T, int DP>
void launch_backward(const Params& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.Lq;
  if ((rows + kWarps - 1) / kWarps > 0x7fffffff) fail("too many rows for one launch");
  ma_delta_kernel<T><<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kThreads, 0, stream>>>(p);
  check_launch(kOp);

  constexpr int BN = Cfg<DP>::BN_DQ;
  const int wn = key_columns(p.Lq, BN);
  const size_t dq_smem = QueryLayout<T, DP>{BN, 2, cdiv(p.Lk, BN)}.bytes();
  set_smem(ma_dq_kernel<T, DP>, dq_smem);
  ma_dq_kernel<T, DP><<<grid_of(p, cdiv(p.Lq, 16 * (kWarps / wn))), kThreads, dq_smem, stream>>>(p, wn);
  check_launch(kOp);

  if constexpr (Cfg<DP>::kSplitDkv) {
    launch_dkv<T, DP, kDvOnly>(p, stream);
    launch_dkv<T, DP, kDkOnly>(p, stream);
  } else {
    launch_dkv<T, DP, kBoth>(p, stream);
  }
}

// Head dims are padded up to one of seven compiled tile widths (zero-filled): 32, 64, 96 and 128,
// and 192, 256 and 320 for TAR-ViTPose's 4 heads of ViT-B, -L and -H.
template <typename T, bool kBackward>
void dispatch_dim(const Params& p, cudaStream_t stream) {
  auto run = [&](auto dp) {
    constexpr int DP = decltype(dp)::value;
    if (kBackward)
      launch_backward<T, DP>(p, stream);
    else
      launch_forward<T, DP>(p, stream);
  };
  if (p.D <= 32)
    run(std::integral_constant<int, 32>());
  else if (p.D <= 64)
    run(std::integral_constant<int, 64>());
  else if (p.D <= 96)
    run(std::integral_constant<int, 96>());
  else if (p.D <= 128)
    run(std::integral_constant<int, 128>());
  else if (p.D <= 192)
    run(std::integral_constant<int, 192>());
  else if (p.D <= 256)
    run(std::integral_constant<int, 256>());
  else
    run(std::integral_constant<int, 320>());
}

template <bool kBackward>
void dispatch_dtype(const Params& p, int dtype, cudaStream_t stream) {
  if (dtype == static_cast<int>(DType::kBFloat16))
    dispatch_dim<__nv_bfloat16, kBackward>(p, stream);
  else if (dtype == static_cast<int>(DType::kFloat16))
    dispatch_dim<__half, kBackward>(p, stream);
  else
    fail("dtype must be float16 or bfloat16 (float32 runs on the triton backend)");
}

}  // namespace

void forward(const Params& p, int dtype, cudaStream_t stream) {
  check_common(p);
  if (!p.out || reinterpret_cast<std::uintptr_t>(p.out) % 16) fail("out must be non-null and 16-byte aligned");
  dispatch_dtype<false>(p, dtype, stream);
}

void backward(const Params& p, int dtype, cudaStream_t stream) {
  check_common(p);
  check_operand("dout", p.dout);
  if (!p.out || !p.delta || !p.dq || !p.dk || !p.dv) fail("out, delta, dq, dk, dv are required");
  for (const void* ptr : {p.dq, p.dk, p.dv})
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16) fail("gradients must be 16-byte aligned");
  dispatch_dtype<true>(p, dtype, stream);
}

}  // namespace ma
}  // namespace vitpose
