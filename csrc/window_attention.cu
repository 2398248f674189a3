// window_attention: fused windowed attention on tensor cores (mma.sync, sm_80 and later),
// FlashAttention-2 style: forward with online softmax saving the per-row logsumexp, backward
// recomputing the probabilities from it. The spec is vitpose_kernels/reference/window_attention.py.
//
// Work decomposition. Every query block (64 rows, one CTA of 4 warps, 16 rows per warp) takes
// its rows from one *segment* and walks a short list of key segments:
//   grid query block (rows of one cell):  keys = [its cell] + [P pooled rows, then the G global tokens]
//   global query block (rows 0..G-1):     keys = [all N tokens]
// A segment is an index range mapped to rows by arithmetic: the tokens of a (shifted, possibly
// partial) cell, the P pooled rows, or a contiguous token range. No mask is materialized; keys
// past a segment's end get -inf, and relative position is added only to (cell, same cell) pairs.
// The backward is deterministic without atomics: the dq kernel uses the forward's decomposition
// (a query block owns its dq rows and its rows of d(q.rel_pos)), the dk/dv kernel the transposed
// one (a key block owns its dk, dv rows and walks the query segments that see it):
//   cell key block:    queries = [its cell] + [global tokens]
//   pooled key block:  queries = [all grid tokens]
//   global key block:  queries = [all N tokens]
// Pooled keys/values (tile means) and q . rel_pos are computed by torch on small tensors and
// their gradients flow back through torch (vitpose_kernels/cuda_backend/window_attention.py).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.h"
#include "window_attention_mma.cuh"
#include "window_attention_params.cuh"

namespace vitpose {
namespace wa {
namespace {

constexpr const char* kOp = "window_attention";
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kThreads = 128;  // 4 warps
constexpr int kPad = 8;        // smem rows padded by 16 bytes: ldmatrix rows hit distinct banks

__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }

enum SegKind : int { kCell = 0, kPool = 1, kRange = 2, kExtra = 3 };

// Rows [0, len) of a segment. kCell: the tokens of the cell [y0, y0+len/cw) x [x0, x0+cw) in
// row-major order; kPool: pooled rows start..; kRange: tokens start..; kExtra: the P pooled rows
// then the G global tokens, so that a grid query's few extra keys share one key tile.
struct Seg {
  int kind, len, start, y0, x0, cw;
};

// The cell layout of the grid: cell row of grid row y is floor((y - sh) / wh); padding the top
// by pad_t = (wh - sh) % wh rows turns that into floor((y + pad_t) / wh) + const.
struct Cells {
  int ncy, ncx, pad_t, pad_l;
};

Cells cells_of(const Params& p) {
  Cells c;
  c.pad_t = (p.wh - p.sh) % p.wh;
  c.pad_l = (p.ww - p.sw) % p.ww;
  c.ncy = cdiv(p.Hg + c.pad_t, p.wh);
  c.ncx = cdiv(p.Wg + c.pad_l, p.ww);
  return c;
}

__device__ __forceinline__ Seg cell_seg(const Params& p, const Cells& c, int cell) {
  const int cy = cell / c.ncx, cx = cell - cy * c.ncx;
  const int y0 = max(cy * p.wh - c.pad_t, 0), y1 = min((cy + 1) * p.wh - c.pad_t, p.Hg);
  const int x0 = max(cx * p.ww - c.pad_l, 0), x1 = min((cx + 1) * p.ww - c.pad_l, p.Wg);
  return Seg{kCell, (y1 - y0) * (x1 - x0), 0, y0, x0, x1 - x0};
}
__device__ __forceinline__ Seg range_seg(int kind, int start, int len) { return Seg{kind, len, start, 0, 0, 1}; }

// Row of member i (< len) in its tensor: a token of q/k/v/out, or a row of the pooled tensors.
__device__ __forceinline__ int seg_row(const Seg& s, int i, const Params& p) {
  if (s.kind == kCell) {
    const int y = i / s.cw;
    return p.G + (s.y0 + y) * p.Wg + s.x0 + (i - y * s.cw);
  }
  if (s.kind == kExtra) return i < p.P ? i : i - p.P;
  return s.start + i;
}
// Grid coordinates of a cell member, packed y << 16 | x (grids are < 32768 a side).
__device__ __forceinline__ int seg_yx(const Seg& s, int i) {
  const int y = i / s.cw;
  return ((s.y0 + y) << 16) | (s.x0 + i - y * s.cw);
}

// Rows r0..r0+ROWS-1 of a segment into a padded smem tile [ROWS][DP + kPad], 16 bytes per
// cp.async; rows past the segment and columns past D are zero-filled. The pooled rows of a
// kExtra segment come from (pbase, psn), everything else from (base, sn).
template <typename T, int DP, int ROWS>
__device__ __forceinline__ void load_rows(T* s, const T* base, int64_t sn, const Seg& seg, int r0,
                                          const Params& p, const T* pbase = nullptr, int64_t psn = 0) {
  constexpr int kChunks = DP / 8;
  for (int c = threadIdx.x; c < ROWS * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c - r * kChunks;
    const int i = r0 + r;
    const bool ok = i < seg.len && ch * 8 < p.D;
    const bool from_pool = seg.kind == kExtra && i < p.P;
    const T* src = base;
    if (ok) src = (from_pool ? pbase : base) + static_cast<int64_t>(seg_row(seg, i, p)) * (from_pool ? psn : sn) + ch * 8;
    cp_async16(s + r * (DP + kPad) + ch * 8, src, ok);
  }
}

// Rows of a padded smem tile out to a contiguous (rows, D) destination, 16 bytes per store.
template <typename T, int DP, int ROWS>
__device__ __forceinline__ void store_rows(T* dst_bh, const T* s, const Seg& seg, int r0, bool pooled,
                                           const Params& p) {
  constexpr int kChunks = DP / 8;
  for (int c = threadIdx.x; c < ROWS * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c - r * kChunks;
    if (r0 + r < seg.len && ch * 8 < p.D) {
      const int row = pooled ? r0 + r : seg_row(seg, r0 + r, p);
      *reinterpret_cast<uint4*>(dst_bh + static_cast<int64_t>(row) * p.D + ch * 8) =
          *reinterpret_cast<const uint4*>(s + r * (DP + kPad) + ch * 8);
    }
  }
}

// A warp's 16-row accumulator (fp32 C fragments, n8 tiles) into its rows of a padded smem tile.
template <typename T, int DP>
__device__ __forceinline__ void stage_acc(T* s, const float (&acc)[DP / 8][4], int warp_row0, float mul) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < DP / 8; ++j) {
    T* p0 = s + (warp_row0 + g) * (DP + kPad) + j * 8 + 2 * t;
    *reinterpret_cast<uint32_t*>(p0) = Mma<T>::pack(acc[j][0] * mul, acc[j][1] * mul);
    *reinterpret_cast<uint32_t*>(p0 + 8 * (DP + kPad)) = Mma<T>::pack(acc[j][2] * mul, acc[j][3] * mul);
  }
}

template <typename T>
__device__ __forceinline__ const T* bh_ptr(const Operand& o, int b, int h) {
  return static_cast<const T*>(o.ptr) + b * o.sb + h * o.sh;
}

// q . rel_pos_h^T and q . rel_pos_w^T of one (batch, head), rows y*Wg + x; null where absent.
struct RelPos {
  const float* qrh;
  const float* qrw;
  __device__ __forceinline__ bool any() const { return qrh || qrw; }
};

__device__ __forceinline__ RelPos rel_pos_of(const Params& p, int64_t bh) {
  const int64_t ngrid = static_cast<int64_t>(p.Hg) * p.Wg;
  return RelPos{p.qrh ? p.qrh + bh * ngrid * p.Rh : nullptr, p.qrw ? p.qrw + bh * ngrid * p.Rw : nullptr};
}

// Relative-position logit of a grid query (row `grow` = y*Wg + x of q . rel_pos^T, coords qyx)
// and a key of the same cell (coords kyx): q . Rh[yq - yk + wh - 1] + q . Rw[xq - xk + ww - 1].
__device__ __forceinline__ float rel_bias(const Params& p, const RelPos& rp, int qyx, int kyx) {
  const int yq = qyx >> 16, xq = qyx & 0xffff, yk = kyx >> 16, xk = kyx & 0xffff;
  const int64_t grow = static_cast<int64_t>(yq) * p.Wg + xq;
  float b = 0.f;
  if (rp.qrh) b += __ldg(rp.qrh + grow * p.Rh + (yq - yk + p.wh - 1));
  if (rp.qrw) b += __ldg(rp.qrw + grow * p.Rw + (xq - xk + p.ww - 1));
  return b;
}

// ============================================================================ block decomposition
// The segments a block walks, concatenated and cut into tiles of `bs` rows. Never more than two
// today: a grid query's extra keys (P pooled rows, G global tokens) are one kExtra segment so that
// they share a tile. Empty segments are never listed. The third slot is dead but kept: without it
// nvcc 13.0 allocates the tile loops differently, up to 58 more registers and the dq kernel at
// D 128 spilling (measured).
struct SegList {
  Seg a, b, c;
  int n;  // 1 or 2

  __device__ __forceinline__ int tiles(int bs) const {
    return cdiv(a.len, bs) + (n > 1 ? cdiv(b.len, bs) : 0) + (n > 2 ? cdiv(c.len, bs) : 0);
  }
  // Tile `tile`: its segment and the segment row it starts at.
  __device__ __forceinline__ void locate(int bs, int tile, Seg& out, int& r0) const {
    const int ta = cdiv(a.len, bs);
    if (tile < ta || n == 1) {
      out = a;
      r0 = tile * bs;
      return;
    }
    tile -= ta;
    const int tb = cdiv(b.len, bs);
    if (tile < tb || n == 2) {
      out = b;
      r0 = tile * bs;
      return;
    }
    out = c;
    r0 = (tile - tb) * bs;
  }
};

// A CTA's work: rows r0.. of segment `own` (its output rows), and the segments it walks. r0 >=
// own.len for the empty blocks of a partial cell.
struct Block {
  Seg own;
  int r0;
  SegList walk;
};

// The forward's (and the dq kernel's) decomposition, BM query rows a block:
//   global query block (rows 0..G-1):     keys = [all N tokens]
//   grid query block (rows of one cell):  keys = [its cell] + [P pooled rows, then the G global tokens]
__device__ __forceinline__ Block query_block(const Params& p, const Cells& cells, int bm, int bx) {
  const int nqg = cdiv(p.G, bm), qbpc = cdiv(p.wh * p.ww, bm);
  Block blk;
  if (bx < nqg) {
    blk.own = range_seg(kRange, 0, p.G);
    blk.r0 = bx * bm;
    blk.walk = SegList{range_seg(kRange, 0, p.N), Seg{}, Seg{}, 1};
  } else {
    bx -= nqg;
    blk.own = cell_seg(p, cells, bx / qbpc);
    blk.r0 = (bx % qbpc) * bm;
    blk.walk = SegList{blk.own, Seg{}, Seg{}, 1};
    if (p.P + p.G > 0) blk.walk = SegList{blk.own, range_seg(kExtra, 0, p.P + p.G), Seg{}, 2};
  }
  return blk;
}

// The dk/dv kernel's (transposed) decomposition, BN key rows a block:
//   pooled key block:  queries = [all grid tokens]
//   global key block:  queries = [all N tokens]
//   cell key block:    queries = [its cell] + [global tokens]
__device__ __forceinline__ Block key_block(const Params& p, const Cells& cells, int bn, int bx) {
  const int npb = cdiv(p.P, bn), ngb = cdiv(p.G, bn), kbpc = cdiv(p.wh * p.ww, bn);
  Block blk;
  if (bx < npb) {
    blk.own = range_seg(kPool, 0, p.P);
    blk.r0 = bx * bn;
    blk.walk = SegList{range_seg(kRange, p.G, p.Hg * p.Wg), Seg{}, Seg{}, 1};
  } else if ((bx -= npb) < ngb) {
    blk.own = range_seg(kRange, 0, p.G);
    blk.r0 = bx * bn;
    blk.walk = SegList{range_seg(kRange, 0, p.N), Seg{}, Seg{}, 1};
  } else {
    bx -= ngb;
    blk.own = cell_seg(p, cells, bx / kbpc);
    blk.r0 = (bx % kbpc) * bn;
    blk.walk = SegList{blk.own, Seg{}, Seg{}, 1};
    if (p.G > 0) blk.walk = SegList{blk.own, range_seg(kRange, 0, p.G), Seg{}, 2};
  }
  return blk;
}

// ============================================================================ tile pipeline
// One (batch, head) of the keys and values; the pooled rows of a kExtra segment come from kp/vp.
template <typename T>
struct KeySrc {
  const T *k, *v, *kp, *vp;
};

template <typename T>
__device__ __forceinline__ KeySrc<T> key_src(const Params& p, int b, int h) {
  const T* k = bh_ptr<T>(p.k, b, h);
  const T* v = bh_ptr<T>(p.v, b, h);
  return KeySrc<T>{k, v, p.P > 0 ? bh_ptr<T>(p.kp, b, h) : k, p.P > 0 ? bh_ptr<T>(p.vp, b, h) : v};
}

// Key tile `tile` of `keys` into one buffer of sK, sV ([BN][DP + kPad]) and, when with_yx and the
// tile is a cell's, the keys' grid coordinates into sKyx[BN] for the relative-position term.
template <typename T, int DP, int BN>
__device__ __forceinline__ void load_key_tile(T* sK, T* sV, int* sKyx, const KeySrc<T>& src, const SegList& keys,
                                              int tile, bool with_yx, const Params& p) {
  Seg s;
  int n0;
  keys.locate(BN, tile, s, n0);
  load_rows<T, DP, BN>(sK, src.k, p.k.sn, s, n0, p, src.kp, p.kp.sn);
  load_rows<T, DP, BN>(sV, src.v, p.v.sn, s, n0, p, src.vp, p.vp.sn);
  if (with_yx && s.kind == kCell && threadIdx.x < BN)
    sKyx[threadIdx.x] = n0 + static_cast<int>(threadIdx.x) < s.len ? seg_yx(s, n0 + threadIdx.x) : 0;
}

// Double buffering: issue tile + 1's copies into the other buffer (load(tile, buf)), then wait for
// tile's own group only (cp.async groups retire in order) and make it visible to the whole CTA.
template <typename Load>
__device__ __forceinline__ void prefetch_next_and_wait(int tile, int ntiles, const Load& load) {
  if (tile + 1 < ntiles) {
    load(tile + 1, (tile & 1) ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// ============================================================================ warp tile math
// A warp owns 16 rows of every product; a thread holds rows g and g + 8 of them (mma C fragment,
// window_attention_mma.cuh). Whether segment row i is in segment s, and its grid coordinates
// where s is a cell.
__device__ __forceinline__ void own_row(const Seg& s, int i, bool& ok, int& yx) {
  ok = i < s.len;
  yx = (ok && s.kind == kCell) ? seg_yx(s, i) : 0;
}

// The forward's saved statistics of query i of segment s (when ok, else zeros): logsumexp in log2
// units and delta = rowsum(dout * out).
__device__ __forceinline__ void row_stats(const Params& p, int64_t bh, const Seg& s, int i, bool ok, float& lse2,
                                          float& dlt) {
  const int64_t row = ok ? bh * p.N + seg_row(s, i, p) : 0;
  lse2 = ok ? p.lse[row] * kLog2e : 0.f;
  dlt = ok ? p.delta[row] : 0.f;
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
}

// f(j, e, col, r) for every element e of every n8 accumulator tile j of a 16 x 8N product: its
// column in the product and its thread row r (g + 8r of the warp's 16).
template <int N, typename F>
__device__ __forceinline__ void for_each_acc(int tq, const F& f) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) f(j, e, j * 8 + 2 * tq + (e & 1), e >> 1);
  }
}

// The C fragments of n8 tiles 2kk and 2kk + 1, rounded to T, are the A fragment of the next
// product's k-step kk: P and dS never leave registers (window_attention_mma.cuh).
template <typename T, int N>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c)[N][4], int kk) {
  a[0] = Mma<T>::pack(c[2 * kk][0], c[2 * kk][1]);
  a[1] = Mma<T>::pack(c[2 * kk][2], c[2 * kk][3]);
  a[2] = Mma<T>::pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = Mma<T>::pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// S = A B^T over the head dim for the warp's 16 rows, A's fragments already in registers, B the
// NB rows of a padded tile.
template <typename T, int DP, int NB>
__device__ __forceinline__ void mma_abt(float (&s)[NB / 8][4], const uint32_t (&af)[DP / 16][4], const T* b,
                                        int lane) {
  constexpr int LD = DP + kPad;
  zero(s);
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
    for (int nn = 0; nn < NB / 16; ++nn) {
      uint32_t bf[4];
      ldsm_x4(bf, b + (nn * 16 + lrow_b(lane)) * LD + kk * 16 + lcol_b(lane));
      Mma<T>::run(s[2 * nn], af[kk], bf[0], bf[1]);
      Mma<T>::run(s[2 * nn + 1], af[kk], bf[2], bf[3]);
    }
  }
}

// The backward's two score products in one pass over the head dim: S = A B^T and dP = A2 B2^T,
// A and A2 the rows a_row0..a_row0+15 of padded tiles, B and B2 all NB rows of theirs.
template <typename T, int DP, int NB>
__device__ __forceinline__ void mma_abt_pair(float (&s)[NB / 8][4], float (&dp)[NB / 8][4], const T* a, const T* a2,
                                             int a_row0, const T* b, const T* b2, int lane) {
  constexpr int LD = DP + kPad;
  zero(s);
  zero(dp);
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) {
    uint32_t af[4], af2[4];
    ldsm_x4(af, a + (a_row0 + lrow_a(lane)) * LD + kk * 16 + lcol_a(lane));
    ldsm_x4(af2, a2 + (a_row0 + lrow_a(lane)) * LD + kk * 16 + lcol_a(lane));
#pragma unroll
    for (int nn = 0; nn < NB / 16; ++nn) {
      uint32_t bf[4], bf2[4];
      ldsm_x4(bf, b + (nn * 16 + lrow_b(lane)) * LD + kk * 16 + lcol_b(lane));
      ldsm_x4(bf2, b2 + (nn * 16 + lrow_b(lane)) * LD + kk * 16 + lcol_b(lane));
      Mma<T>::run(s[2 * nn], af, bf[0], bf[1]);
      Mma<T>::run(s[2 * nn + 1], af, bf[2], bf[3]);
      Mma<T>::run(dp[2 * nn], af2, bf2[0], bf2[1]);
      Mma<T>::run(dp[2 * nn + 1], af2, bf2[2], bf2[3]);
    }
  }
}

// acc += P B: P (16 x NB) the warp's C fragments of the previous product, B a padded NB x DP tile.
template <typename T, int DP, int NB>
__device__ __forceinline__ void mma_acc_pb(float (&acc)[DP / 8][4], const float (&pc)[NB / 8][4], const T* b,
                                           int lane) {
  constexpr int LD = DP + kPad;
#pragma unroll
  for (int kk = 0; kk < NB / 16; ++kk) {
    uint32_t a[4];
    acc_to_a<T>(a, pc, kk);
#pragma unroll
    for (int dd = 0; dd < DP / 16; ++dd) {
      uint32_t bf[4];
      ldsm_x4_t(bf, b + (kk * 16 + lrow_a(lane)) * LD + dd * 16 + lcol_a(lane));
      Mma<T>::run(acc[2 * dd], a, bf[0], bf[1]);
      Mma<T>::run(acc[2 * dd + 1], a, bf[2], bf[3]);
    }
  }
}

// Both at once, sharing the k-steps: acc += P B and acc2 += P2 B2.
template <typename T, int DP, int NB>
__device__ __forceinline__ void mma_acc_pb_pair(float (&acc)[DP / 8][4], const float (&pc)[NB / 8][4], const T* b,
                                                float (&acc2)[DP / 8][4], const float (&pc2)[NB / 8][4],
                                                const T* b2, int lane) {
  constexpr int LD = DP + kPad;
#pragma unroll
  for (int kk = 0; kk < NB / 16; ++kk) {
    uint32_t a[4], a2[4];
    acc_to_a<T>(a, pc, kk);
    acc_to_a<T>(a2, pc2, kk);
#pragma unroll
    for (int dd = 0; dd < DP / 16; ++dd) {
      uint32_t bf[4], bf2[4];
      ldsm_x4_t(bf, b + (kk * 16 + lrow_a(lane)) * LD + dd * 16 + lcol_a(lane));
      ldsm_x4_t(bf2, b2 + (kk * 16 + lrow_a(lane)) * LD + dd * 16 + lcol_a(lane));
      Mma<T>::run(acc[2 * dd], a, bf[0], bf[1]);
      Mma<T>::run(acc[2 * dd + 1], a, bf[2], bf[3]);
      Mma<T>::run(acc2[2 * dd], a2, bf2[0], bf2[1]);
      Mma<T>::run(acc2[2 * dd + 1], a2, bf2[2], bf2[3]);
    }
  }
}

// One key tile of the online softmax (logits s in log2 units, updated to their exponentials):
// the running row max m and sum l, and the output accumulator o rescaled to the new max. The
// row's 4 lanes (a quad) share its max; l stays per-lane until the end.
template <int DP, int NB>
__device__ __forceinline__ void online_softmax(float (&s)[NB / 8][4], float (&o)[DP / 8][4], float (&m)[2],
                                               float (&l)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < NB / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
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
    for (int j = 0; j < NB / 8; ++j) {
      s[j][2 * r] = exp2f(s[j][2 * r] - m_use);
      s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - m_use);
      l[r] += s[j][2 * r] + s[j][2 * r + 1];
    }
  }
}

// ============================================================================ forward
template <int DP>
struct FwdCfg {
  static constexpr int BM = 64, BN = 64, LD = DP + kPad;
  static constexpr size_t kSmemTiles = size_t(BM + 4 * BN) * LD;  // Q, 2 x K, 2 x V (elements)
  template <typename T>
  static constexpr size_t smem() {
    return kSmemTiles * sizeof(T) + 2 * BN * sizeof(int);
  }
};

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads) wa_fwd_kernel(const Params p, const Cells cells) {
  using C = FwdCfg<DP>;
  constexpr int BM = C::BM, BN = C::BN, LD = C::LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * LD;      // [2][BN][LD]
  T* sV = sK + 2 * BN * LD;  // [2][BN][LD]
  int* sKyx = reinterpret_cast<int*>(sV + 2 * BN * LD);  // [2][BN] key grid coords (cell tiles)

  const int b = blockIdx.z, h = blockIdx.y;
  const Block blk = query_block(p, cells, BM, blockIdx.x);
  const Seg& qs = blk.own;
  const int m0 = blk.r0;
  if (m0 >= qs.len) return;  // an empty block of a partial cell

  const T* q_bh = bh_ptr<T>(p.q, b, h);
  const KeySrc<T> kv = key_src<T>(p, b, h);
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  const RelPos rp = rel_pos_of(p, bh);
  const bool has_bias = rp.any() && qs.kind == kCell;

  const int T_ = blk.walk.tiles(BN);
  auto load_kv = [&](int tile, int buf) {
    load_key_tile<T, DP, BN>(sK + buf * BN * LD, sV + buf * BN * LD, sKyx + buf * BN, kv, blk.walk, tile, has_bias, p);
  };
  load_rows<T, DP, BM>(sQ, q_bh, p.q.sn, qs, m0, p);
  load_kv(0, 0);
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  int qyx[2];
  bool qok[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) own_row(qs, m0 + warp * 16 + g + 8 * r, qok[r], qyx[r]);
  const float scale_log2 = p.scale * kLog2e;

  uint32_t qf[DP / 16][4];
  float o[DP / 8][4];
  zero(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int tile = 0; tile < T_; ++tile) {
    const int buf = tile & 1;
    prefetch_next_and_wait(tile, T_, load_kv);
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < DP / 16; ++kk)
        ldsm_x4(qf[kk], sQ + (warp * 16 + lrow_a(lane)) * LD + kk * 16 + lcol_a(lane));
    }
    Seg seg;
    int n0;
    blk.walk.locate(BN, tile, seg, n0);
    const T* tK = sK + buf * BN * LD;
    const T* tV = sV + buf * BN * LD;

    // S = Q K^T for the warp's 16 rows x BN keys.
    float s[BN / 8][4];
    mma_abt<T, DP, BN>(s, qf, tK, lane);
    // Logits in log2 units; keys past the segment get -inf.
    const bool bias_tile = has_bias && seg.kind == kCell;
    for_each_acc<BN / 8>(tq, [&](int j, int e, int col, int r) {
      float x = s[j][e] * scale_log2;
      if (n0 + col >= seg.len) {
        x = -INFINITY;
      } else if (bias_tile && qok[r]) {
        x += kLog2e * rel_bias(p, rp, qyx[r], sKyx[buf * BN + col]);
      }
      s[j][e] = x;
    });
    online_softmax<DP, BN>(s, o, m, l);
    // O += P V, P straight from the accumulators.
    mma_acc_pb<T, DP, BN>(o, s, tV, lane);
    __syncthreads();  // the buffer just read is the next prefetch's target
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = l[r] > 0.f ? 1.f / l[r] : 0.f;
  }
#pragma unroll
  for (int j = 0; j < DP / 8; ++j) {
    o[j][0] *= inv[0];
    o[j][1] *= inv[0];
    o[j][2] *= inv[1];
    o[j][3] *= inv[1];
  }
  stage_acc<T, DP>(sQ, o, warp * 16, 1.f);
  if (tq == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = m0 + warp * 16 + g + 8 * r;
      if (qok[r]) p.lse[bh * p.N + seg_row(qs, i, p)] = l[r] > 0.f ? (m[r] + log2f(l[r])) * kLn2 : INFINITY;
    }
  }
  __syncthreads();
  store_rows<T, DP, BM>(static_cast<T*>(p.out) + bh * p.N * p.D, sQ, qs, m0, false, p);
}

// ============================================================================ backward: delta
// delta[row] = sum_d dout[row, d] * out[row, d], the softmax-gradient row term of FA-2.
template <typename T>
__global__ void __launch_bounds__(kThreads) wa_delta_kernel(const Params p) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.N;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const int n = static_cast<int>(row % p.N);
  const int64_t bhi = row / p.N;
  const int b = static_cast<int>(bhi / p.H), h = static_cast<int>(bhi % p.H);
  const T* o = static_cast<const T*>(p.out) + row * p.D;
  const T* d = bh_ptr<T>(p.dout, b, h) + n * p.dout.sn;
  float acc = 0.f;
  for (int i = lane; i < p.D; i += 32) acc += Mma<T>::to_float(o[i]) * Mma<T>::to_float(d[i]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) p.delta[row] = acc;
}

// ============================================================================ backward: dq
template <int DP>
struct DqCfg {
  static constexpr int BM = 64, BN = DP <= 64 ? 64 : 32, LD = DP + kPad, LDS = BN + 1;
  template <typename T>
  static constexpr size_t smem(bool bias) {
    return size_t(2 * BM + 4 * BN) * LD * sizeof(T) + 2 * BN * sizeof(int) +
           (bias ? size_t(BM) * LDS * sizeof(float) : 0);
  }
};

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads) wa_dq_kernel(const Params p, const Cells cells) {
  using C = DqCfg<DP>;
  constexpr int BM = C::BM, BN = C::BN, LD = C::LD, LDS = C::LDS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + BM * LD;
  T* sK = sdO + BM * LD;     // [2][BN][LD]
  T* sV = sK + 2 * BN * LD;  // [2][BN][LD]
  int* sKyx = reinterpret_cast<int*>(sV + 2 * BN * LD);  // [2][BN]
  float* sdS = reinterpret_cast<float*>(sKyx + 2 * BN);  // [BM][LDS], only with relative position

  const int b = blockIdx.z, h = blockIdx.y;
  const Block blk = query_block(p, cells, BM, blockIdx.x);
  const Seg& qs = blk.own;
  const int m0 = blk.r0;
  if (m0 >= qs.len) return;

  const T* q_bh = bh_ptr<T>(p.q, b, h);
  const KeySrc<T> kv = key_src<T>(p, b, h);
  const T* do_bh = bh_ptr<T>(p.dout, b, h);
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  const int64_t ngrid = static_cast<int64_t>(p.Hg) * p.Wg;
  const RelPos rp = rel_pos_of(p, bh);
  const bool has_bias = rp.any() && qs.kind == kCell;

  // With relative position, thread t owns d(q . rel_pos_h) of block row t (t < BM) or
  // d(q . rel_pos_w) of row t - BM, and accumulates it in a fixed order: deterministic.
  const int red_row = threadIdx.x % BM;
  const bool red_w = threadIdx.x >= BM;
  float* red_dst = nullptr;
  int red_yx = 0;
  if (has_bias && m0 + red_row < qs.len) {
    red_yx = seg_yx(qs, m0 + red_row);
    const int64_t grow = static_cast<int64_t>(red_yx >> 16) * p.Wg + (red_yx & 0xffff);
    red_dst = red_w ? (p.dqrw ? p.dqrw + (bh * ngrid + grow) * p.Rw : nullptr)
                    : (p.dqrh ? p.dqrh + (bh * ngrid + grow) * p.Rh : nullptr);
    const int R = red_w ? p.Rw : p.Rh;
    if (red_dst)
      for (int i = 0; i < R; ++i) red_dst[i] = 0.f;
  }

  const int T_ = blk.walk.tiles(BN);
  auto load_kv = [&](int tile, int buf) {
    load_key_tile<T, DP, BN>(sK + buf * BN * LD, sV + buf * BN * LD, sKyx + buf * BN, kv, blk.walk, tile, has_bias, p);
  };
  load_rows<T, DP, BM>(sQ, q_bh, p.q.sn, qs, m0, p);
  load_rows<T, DP, BM>(sdO, do_bh, p.dout.sn, qs, m0, p);
  load_kv(0, 0);
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  int qyx[2];
  bool qok[2];
  float lse2[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = m0 + warp * 16 + g + 8 * r;
    own_row(qs, i, qok[r], qyx[r]);
    row_stats(p, bh, qs, i, qok[r], lse2[r], dlt[r]);
  }
  const float scale_log2 = p.scale * kLog2e;

  float dq[DP / 8][4];
  zero(dq);

  for (int tile = 0; tile < T_; ++tile) {
    const int buf = tile & 1;
    prefetch_next_and_wait(tile, T_, load_kv);
    Seg seg;
    int n0;
    blk.walk.locate(BN, tile, seg, n0);
    const T* tK = sK + buf * BN * LD;
    const T* tV = sV + buf * BN * LD;

    // S = Q K^T and dP = dO V^T.
    float s[BN / 8][4], dp[BN / 8][4];
    mma_abt_pair<T, DP, BN>(s, dp, sQ, sdO, warp * 16, tK, tV, lane);
    // P from the saved logsumexp; dS = P * (dP - delta).
    const bool bias_tile = has_bias && seg.kind == kCell;
    for_each_acc<BN / 8>(tq, [&](int j, int e, int col, int r) {
      float x = s[j][e] * scale_log2;
      if (bias_tile && qok[r] && n0 + col < seg.len) x += kLog2e * rel_bias(p, rp, qyx[r], sKyx[buf * BN + col]);
      const float pr = n0 + col < seg.len ? exp2f(x - lse2[r]) : 0.f;
      const float ds = pr * (dp[j][e] - dlt[r]);
      s[j][e] = ds;
      if (bias_tile) sdS[(warp * 16 + g + 8 * r) * LDS + col] = ds;
    });
    // dQ += dS K.
    mma_acc_pb<T, DP, BN>(dq, s, tK, lane);
    if (bias_tile) {  // uniform over the CTA
      __syncthreads();
      if (red_dst) {
        // d(q . R)[row][offset] = sum of dS over the keys at that offset; runs of equal offset
        // (a key row of the cell, for rel_pos_h) are summed in a register first.
        const int ncols = min(BN, seg.len - n0);
        const int yq = red_yx >> 16, xq = red_yx & 0xffff;
        float run = 0.f;
        int cur = -1;
        for (int j = 0; j < ncols; ++j) {
          const int kyx = sKyx[buf * BN + j];
          const int off = red_w ? xq - (kyx & 0xffff) + p.ww - 1 : yq - (kyx >> 16) + p.wh - 1;
          if (off != cur) {
            if (cur >= 0) red_dst[cur] += run;
            cur = off;
            run = 0.f;
          }
          run += sdS[red_row * LDS + j];
        }
        if (cur >= 0) red_dst[cur] += run;
      }
    }
    __syncthreads();
  }

  stage_acc<T, DP>(sQ, dq, warp * 16, p.scale);
  __syncthreads();
  store_rows<T, DP, BM>(static_cast<T*>(p.dq) + bh * p.N * p.D, sQ, qs, m0, false, p);
}

// ============================================================================ backward: dk, dv
template <int DP>
struct DkvCfg {
  static constexpr int BN = 64, BQ = DP <= 64 ? 64 : 32, LD = DP + kPad;
  template <typename T>
  static constexpr size_t smem() {
    return size_t(2 * BN + 4 * BQ) * LD * sizeof(T) + 3 * 2 * BQ * sizeof(float);
  }
};

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads) wa_dkv_kernel(const Params p, const Cells cells) {
  using C = DkvCfg<DP>;
  constexpr int BN = C::BN, BQ = C::BQ, LD = C::LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BN * LD;
  T* sQ = sV + BN * LD;       // [2][BQ][LD]
  T* sdO = sQ + 2 * BQ * LD;  // [2][BQ][LD]
  float* sLse = reinterpret_cast<float*>(sdO + 2 * BQ * LD);  // [2][BQ], log2 units
  float* sDlt = sLse + 2 * BQ;                                // [2][BQ]
  int* sQyx = reinterpret_cast<int*>(sDlt + 2 * BQ);          // [2][BQ]

  const int b = blockIdx.z, h = blockIdx.y;
  const Block blk = key_block(p, cells, BN, blockIdx.x);
  const Seg& ks = blk.own;
  const int n0 = blk.r0;
  if (n0 >= ks.len) return;
  const bool pooled = ks.kind == kPool;

  const T* q_bh = bh_ptr<T>(p.q, b, h);
  const T* do_bh = bh_ptr<T>(p.dout, b, h);
  const T* k_bh = pooled ? bh_ptr<T>(p.kp, b, h) : bh_ptr<T>(p.k, b, h);
  const T* v_bh = pooled ? bh_ptr<T>(p.vp, b, h) : bh_ptr<T>(p.v, b, h);
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;
  const RelPos rp = rel_pos_of(p, bh);
  const bool has_bias = rp.any() && ks.kind == kCell;

  const int T_ = blk.walk.tiles(BQ);
  // A query tile with its rows' saved statistics and grid coordinates.
  auto load_q = [&](int tile, int buf) {
    Seg s;
    int i0;
    blk.walk.locate(BQ, tile, s, i0);
    load_rows<T, DP, BQ>(sQ + buf * BQ * LD, q_bh, p.q.sn, s, i0, p);
    load_rows<T, DP, BQ>(sdO + buf * BQ * LD, do_bh, p.dout.sn, s, i0, p);
    if (threadIdx.x < BQ) {
      const int i = i0 + threadIdx.x;
      const bool ok = i < s.len;
      row_stats(p, bh, s, i, ok, sLse[buf * BQ + threadIdx.x], sDlt[buf * BQ + threadIdx.x]);
      sQyx[buf * BQ + threadIdx.x] = (ok && s.kind == kCell) ? seg_yx(s, i) : 0;
    }
  };
  load_rows<T, DP, BN>(sK, k_bh, pooled ? p.kp.sn : p.k.sn, ks, n0, p);
  load_rows<T, DP, BN>(sV, v_bh, pooled ? p.vp.sn : p.v.sn, ks, n0, p);
  load_q(0, 0);
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  int kyx[2];
  bool kok[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) own_row(ks, n0 + warp * 16 + g + 8 * r, kok[r], kyx[r]);
  const float scale_log2 = p.scale * kLog2e;

  float dk[DP / 8][4], dv[DP / 8][4];
  zero(dk);
  zero(dv);

  for (int tile = 0; tile < T_; ++tile) {
    const int buf = tile & 1;
    prefetch_next_and_wait(tile, T_, load_q);
    Seg seg;
    int i0;
    blk.walk.locate(BQ, tile, seg, i0);
    const T* tQ = sQ + buf * BQ * LD;
    const T* tdO = sdO + buf * BQ * LD;
    const float* tLse = sLse + buf * BQ;
    const float* tDlt = sDlt + buf * BQ;
    const int* tQyx = sQyx + buf * BQ;

    // S^T = K Q^T and dP^T = V dO^T for the warp's 16 keys x BQ queries.
    float s[BQ / 8][4], dp[BQ / 8][4];
    mma_abt_pair<T, DP, BQ>(s, dp, sK, sV, warp * 16, tQ, tdO, lane);
    // P^T from the saved logsumexp; dS^T = P^T * (dP^T - delta).
    const bool bias_tile = has_bias && seg.kind == kCell;
    for_each_acc<BQ / 8>(tq, [&](int j, int e, int col, int r) {
      const bool ok = i0 + col < seg.len;
      float x = s[j][e] * scale_log2;
      if (bias_tile && ok && kok[r]) x += kLog2e * rel_bias(p, rp, tQyx[col], kyx[r]);
      const float pr = ok ? exp2f(x - tLse[col]) : 0.f;
      s[j][e] = pr;
      dp[j][e] = pr * (dp[j][e] - tDlt[col]);
    });
    // dV += P^T dO and dK += dS^T Q.
    mma_acc_pb_pair<T, DP, BQ>(dv, s, tdO, dk, dp, tQ, lane);
    __syncthreads();
  }

  stage_acc<T, DP>(sK, dk, warp * 16, p.scale);
  stage_acc<T, DP>(sV, dv, warp * 16, 1.f);
  __syncthreads();
  const int64_t rows = pooled ? p.P : p.N;
  store_rows<T, DP, BN>(static_cast<T*>(pooled ? p.dkp : p.dk) + bh * rows * p.D, sK, ks, n0, pooled, p);
  store_rows<T, DP, BN>(static_cast<T*>(pooled ? p.dvp : p.dv) + bh * rows * p.D, sV, ks, n0, pooled, p);
}


// ============================================================================ host side
void fail(const std::string& what) { throw std::invalid_argument(std::string("vitpose_kernels.") + kOp + ": " + what); }

void check_operand(const char* name, const Operand& o, bool required) {
  if (!o.ptr) {
    if (required) fail(std::string(name) + " is null");
    return;
  }
  if (reinterpret_cast<std::uintptr_t>(o.ptr) % 16 || o.sb % 8 || o.sh % 8 || o.sn % 8)
    fail(std::string(name) + ": rows must be 16-byte aligned (pointer and strides multiples of 8 elements)");
}

void check_common(const Params& p) {
  if (p.B < 1 || p.H < 1 || p.B > 65535 || p.H > 65535) fail("need 1 <= B, H <= 65535");
  if (p.D < 8 || p.D > 128 || p.D % 8) fail("head dim must be a multiple of 8 in [8, 128]");
  if (p.Hg < 1 || p.Wg < 1 || p.Hg >= 32768 || p.Wg >= 32768) fail("grid sides must be in [1, 32767]");
  if (p.G < 0 || static_cast<int64_t>(p.G) + static_cast<int64_t>(p.Hg) * p.Wg != p.N) fail("N != G + Hg*Wg");
  if (p.wh < 1 || p.ww < 1 || p.sh < 0 || p.sw < 0 || p.sh >= p.wh || p.sw >= p.ww) fail("bad window/shift");
  if (p.P < 0 || (p.P > 0 && (!p.kp.ptr || !p.vp.ptr))) fail("pooled operands missing");
  if ((p.qrh != nullptr) != (p.Rh > 0) || (p.qrw != nullptr) != (p.Rw > 0)) fail("rel-pos sizes/pointers mismatch");
  if (p.qrh && p.Rh != 2 * p.wh - 1) fail("Rh must be 2*wh-1");
  if (p.qrw && p.Rw != 2 * p.ww - 1) fail("Rw must be 2*ww-1");
  check_operand("q", p.q, true);
  check_operand("k", p.k, true);
  check_operand("v", p.v, true);
  check_operand("kp", p.kp, p.P > 0);
  check_operand("vp", p.vp, p.P > 0);
}

dim3 grid_of(const Params& p, int blocks) {
  if (blocks < 1) fail("empty launch");
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  VITPOSE_CUDA_CHECK(kOp, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes)));
}

int64_t query_blocks(const Params& p, const Cells& c, int bm) {
  return cdiv(p.G, bm) + static_cast<int64_t>(c.ncy) * c.ncx * cdiv(p.wh * p.ww, bm);
}

int checked_blocks(int64_t n) {
  if (n > 0x7fffffff) fail("too many blocks for one launch");
  return static_cast<int>(n);
}

template <typename T, int DP>
void launch_forward(const Params& p, cudaStream_t stream) {
  const Cells c = cells_of(p);
  const size_t smem = FwdCfg<DP>::template smem<T>();
  set_smem(wa_fwd_kernel<T, DP>, smem);
  wa_fwd_kernel<T, DP><<<grid_of(p, checked_blocks(query_blocks(p, c, FwdCfg<DP>::BM))), kThreads, smem, stream>>>(p, c);
  check_launch(kOp);
}

template <typename T, int DP>
void launch_backward(const Params& p, cudaStream_t stream) {
  const Cells c = cells_of(p);
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.N;
  wa_delta_kernel<T><<<checked_blocks((rows + 3) / 4), kThreads, 0, stream>>>(p);
  check_launch(kOp);

  const bool bias = p.qrh || p.qrw;
  const size_t dq_smem = DqCfg<DP>::template smem<T>(bias);
  set_smem(wa_dq_kernel<T, DP>, dq_smem);
  wa_dq_kernel<T, DP><<<grid_of(p, checked_blocks(query_blocks(p, c, DqCfg<DP>::BM))), kThreads, dq_smem, stream>>>(p, c);
  check_launch(kOp);

  constexpr int BN = DkvCfg<DP>::BN;
  const int64_t kblocks = cdiv(p.P, BN) + cdiv(p.G, BN) + static_cast<int64_t>(c.ncy) * c.ncx * cdiv(p.wh * p.ww, BN);
  const size_t dkv_smem = DkvCfg<DP>::template smem<T>();
  set_smem(wa_dkv_kernel<T, DP>, dkv_smem);
  wa_dkv_kernel<T, DP><<<grid_of(p, checked_blocks(kblocks)), kThreads, dkv_smem, stream>>>(p, c);
  check_launch(kOp);
}

// Head dims are padded up to one of four compiled tile widths (80 runs as 96, zero-filled).
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
  else
    run(std::integral_constant<int, 128>());
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
  if (!p.out || !p.lse) fail("out and lse are required");
  if (reinterpret_cast<std::uintptr_t>(p.out) % 16) fail("out must be 16-byte aligned");
  dispatch_dtype<false>(p, dtype, stream);
}

void backward(const Params& p, int dtype, cudaStream_t stream) {
  check_common(p);
  check_operand("dout", p.dout, true);
  if (!p.out || !p.lse || !p.delta || !p.dq || !p.dk || !p.dv) fail("out, lse, delta, dq, dk, dv are required");
  if (p.P > 0 && (!p.dkp || !p.dvp)) fail("dkp and dvp are required with pooling");
  if ((p.qrh != nullptr) != (p.dqrh != nullptr) || (p.qrw != nullptr) != (p.dqrw != nullptr))
    fail("rel-pos gradients must be given exactly when rel-pos inputs are");
  for (const void* ptr : {p.out, p.dq, p.dk, p.dv, p.dkp, p.dvp})
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16) fail("outputs must be 16-byte aligned");
  dispatch_dtype<true>(p, dtype, stream);
}

}  // namespace wa
}  // namespace vitpose
