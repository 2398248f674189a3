// window_attention: the launch plan (dense tile packing, block and slot counts, workspace) and
// the device pieces every kernel of window_attention.cu is built from: tile decoding, row blocks
// and their metadata, strided row loads, and the warp-level tensor-core steps.
//
// The layout is the Triton v2 one (vitpose_kernels/triton_backend/window_attention/__init__.py,
// "Design note"): per axis the (shifted, possibly partial) cells become tiles of at most one
// window, the first partial cell appended to the last tile when both fit one window (Swin's
// rolled windows); a 2-D tile holds up to 2 x 2 cells, its `count` real tokens are its slots
// [0, count), row-major over its real rows x real columns, and two slots attend iff their cell
// ids (0..3) are equal. Local slot coordinates are contiguous inside a cell, so their differences
// are the spec's relative offsets.
//
// CUDA specifics: a CTA is 4 warps; a *block* is 64 rows (a warp owns 16 of them in every
// product). Tiles of S = wh*ww <= 64 tokens ("small") take RB = 16*ceil(S/16) rows of a block, so
// SPB = 64 / RB tiles share one block (block-diagonal: a warp only multiplies the 16-row key
// chunks of its own tile); larger tiles ("large") are cut into blocks of 64 slots.
#pragma once

#include <cstdint>

#include "window_attention_mma.cuh"
#include "window_attention_params.cuh"

namespace vitpose {
namespace wa {

constexpr int kThreads = 128;      // 4 warps
constexpr int kRows = 64;          // rows of a block
constexpr int kPad = 8;            // smem rows padded by 16 bytes: ldmatrix rows hit distinct banks
constexpr int kBlocksPerCta = 4;   // small tiles: blocks one CTA walks (a function of the tiling only)
constexpr int kMaxRelRows = 128;   // Rh + Rw: q . [Rh; Rw]^T is a (64, <= 128) float32 smem table
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int round16(int a) { return cdiv(a, 16) * 16; }

// ============================================================================ plan (host + device)
// One axis of the dense packing: cells start at s + i*w; with `before` = (w - s) % w virtual
// lines in front, cell c covers [c*w - before, (c+1)*w - before) clipped to [0, n).
struct Axis {
  int n, w, tiles, merge, before, first;
};

inline Axis pack_axis(int n, int w, int s) {
  Axis a;
  a.n = n;
  a.w = w;
  a.before = (w - s) % w;
  const int cells = cdiv(n + a.before, w);
  a.first = w - a.before < n ? w - a.before : n;
  const int last = n + a.before - (cells - 1) * w;
  a.merge = cells >= 2 && a.first + last <= w;
  a.tiles = cells - a.merge;
  return a;
}

// Everything about a call that depends on its shape only (computed once per launch on the host,
// passed by value). Slot counts depend on the tiling, never on B or H: results are bit-identical
// across batch sizes and the cost model may scale a reduced run.
struct Plan {
  Axis ay, ax;
  int G, Hg, Wg, wh, ww, N, D, BH, H;
  int T, S;        // packed tiles, tokens per full window
  bool small;      // S <= 64: one block per tile group, single-pass backward
  int RB, SPB;     // small: rows a tile takes in a block, tiles per block (large: 64, 1)
  int QB;          // blocks per tile (large); 1 when small
  int nblocks;     // query blocks of the grid rows (per head)
  int ctas;        // CTAs per head of the grid kernels
  int E, P, Epad;  // extra keys (P pooled + G global), rows padded to 16 (<= 64: resident)
  bool xres;       // E <= 64: the extra keys stay in shared memory for the whole CTA
  int ntw, ntyp;   // pooled tiles per row, pooled tile rows
  int Rh, Rw, RT, RTpad;  // rel-pos rows, RT = Rh + Rw (0 without), padded to 16
  int npart_grid, npart;  // extra keys' partial-sum slots per head (grid rows, + global query blocks)
  int gqb;                // global query blocks
  int rel_slots;          // rel-pos partial-sum slots per head (one per grid query block)
  bool prep;              // the backward's prep pass runs (pooling, or large tiles: delta first)
  bool resident;          // one CTA per head keeps it in shared memory (window_attention.cu)
  int64_t ws_delta, ws_part, ws_xg, ws_rel, ws_total;  // workspace offsets (floats)
};

// ============================================================================ tile decoding
struct AxisTile {
  int start, len0, len1;  // first line of the main cell, its length, length of cell 0 (appended)
};

__host__ __device__ __forceinline__ AxisTile axis_tile(const Axis& a, int i) {
  const int c = i + a.merge;
  const int lo = c * a.w - a.before;
  const int start = lo > 0 ? lo : 0;
  const int hi = lo + a.w < a.n ? lo + a.w : a.n;
  return AxisTile{start, hi - start, (i == a.tiles - 1 && a.merge) ? a.first : 0};
}

__device__ __forceinline__ int tile_count(const Plan& pl, int t) {
  const int ty = t / pl.ax.tiles;
  const AxisTile y = axis_tile(pl.ay, ty), x = axis_tile(pl.ax, t - ty * pl.ax.tiles);
  return (y.len0 + y.len1) * (x.len0 + x.len1);
}

// Slot s of tile t: token, cell id (0..3), local coordinates (packed ly << 16 | lx); false past
// the tile's real tokens.
__device__ __forceinline__ bool tile_slot(const Plan& pl, int t, int s, int& tok, int& cell, int& lyx) {
  const int ty = t / pl.ax.tiles;
  const AxisTile y = axis_tile(pl.ay, ty), x = axis_tile(pl.ax, t - ty * pl.ax.tiles);
  const int cols = x.len0 + x.len1;
  if (s >= (y.len0 + y.len1) * cols) return false;
  const int ly = s / cols, lx = s - ly * cols;
  const int gy = ly < y.len0 ? y.start + ly : ly - y.len0;
  const int gx = lx < x.len0 ? x.start + lx : lx - x.len0;
  tok = pl.G + gy * pl.Wg + gx;
  cell = 2 * (ly >= y.len0) + (lx >= x.len0);
  lyx = (ly << 16) | lx;
  return true;
}

// Grid token -> its tile of the unshifted tiling (a pooled key) and that tile's member count.
__device__ __forceinline__ int pooled_index(const Plan& pl, int tok, float& inv_count) {
  const int gi = tok - pl.G;
  const int y = gi / pl.Wg, x = gi - y * pl.Wg;
  const int ty = y / pl.wh, tx = x / pl.ww;
  const int rows = min(pl.wh, pl.Hg - ty * pl.wh), cols = min(pl.ww, pl.Wg - tx * pl.ww);
  inv_count = 1.f / static_cast<float>(rows * cols);
  return ty * pl.ntw + tx;
}

// ============================================================================ row blocks
// The rows of one block: slots of up to SPB consecutive tiles (kTiles; rows [i*rb, (i+1)*rb)
// hold tile t0 + i from slot s0), or tokens [s0, limit) of a contiguous range (kRange: global
// rows, all keys of a global query, rows of extra_kv).
enum RowKind : int { kTiles = 0, kRange = 1 };
struct RowBlock {
  int kind, t0, ntiles, s0, rb, limit;
};

__device__ __forceinline__ RowBlock tile_rows(int t0, int ntiles, int s0, int rb) {
  return RowBlock{kTiles, t0, ntiles, s0, rb, 0};
}
__device__ __forceinline__ RowBlock range_rows(int s0, int limit) { return RowBlock{kRange, 0, 1, s0, 64, limit}; }

// Per-row metadata of a block in shared memory: token (-1: no row), group = 4 * tile-in-block +
// cell id (rows attend iff equal), local coordinates.
struct Meta {
  int* tok;
  int* grp;
  int* lyx;
};
__device__ __forceinline__ Meta meta_at(int* base) { return Meta{base, base + kRows, base + 2 * kRows}; }

// Threads < rows fill the block's metadata (callers __syncthreads before reading it).
__device__ __forceinline__ void fill_meta(const Meta& m, const RowBlock& rb, const Plan& pl, int rows) {
  const int r = threadIdx.x;
  if (r >= rows) return;
  int tok = -1, cell = 0, lyx = 0, sub = 0;
  if (rb.kind == kRange) {
    if (rb.s0 + r < rb.limit) tok = rb.s0 + r;
  } else {
    sub = r / rb.rb;
    int t_tok;
    if (sub < rb.ntiles && tile_slot(pl, rb.t0 + sub, rb.s0 + r - sub * rb.rb, t_tok, cell, lyx)) tok = t_tok;
  }
  m.tok[r] = tok;
  m.grp[r] = tok >= 0 ? sub * 4 + cell : -1;
  m.lyx[r] = lyx;
}

// 16-row chunks of a block that hold rows (bit i: rows 16i..16i+15; a tile's real rows are a
// prefix of its rb rows, and rb is a multiple of 16).
__device__ __forceinline__ unsigned live_chunks(const Meta& m, int rows) {
  unsigned on = 0;
  for (int i = 0; i < rows / 16; ++i) on |= (m.tok[16 * i] >= 0 ? 1u : 0u) << i;
  return on;
}
// Of those, the chunks in the same tile as row `row` (the keys a query row of the block may see).
__device__ __forceinline__ unsigned same_tile_chunks(const Meta& m, int rows, int row) {
  const int sub = m.grp[row] >> 2;
  unsigned on = 0;
  for (int i = 0; i < rows / 16; ++i) on |= (m.tok[16 * i] >= 0 && (m.grp[16 * i] >> 2) == sub ? 1u : 0u) << i;
  return on;
}

// ============================================================================ memory
template <typename T>
__device__ __forceinline__ const T* head_of(const Operand& o, int bh, int H) {
  const int b = bh / H, h = bh - b * H;
  return static_cast<const T*>(o.ptr) + b * o.sb + h * o.sh;
}
template <typename T>
__device__ __forceinline__ T* head_of(const OutOperand& o, int bh, int H) {
  const int b = bh / H, h = bh - b * H;
  return static_cast<T*>(o.ptr) + b * o.sb + h * o.sh;
}

// Rows tok[0..rows) of a strided (N, D) head into a padded smem tile [rows][DP + kPad], 16 bytes
// per cp.async; absent rows (tok < 0) and columns past D are zero-filled (nothing read).
template <typename T, int DP>
__device__ __forceinline__ void load_tile(T* s, const T* base, int64_t sn, const int* tok, int rows, int D) {
  constexpr int kChunks = DP / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c - r * kChunks;
    const int row = tok[r];
    const bool ok = row >= 0 && ch * 8 < D;
    cp_async16(s + r * (DP + kPad) + ch * 8, ok ? base + row * sn + ch * 8 : base, ok);
  }
}

// rows x DP elements of a contiguous (rows, D) float32 matrix into smem (zero past `rows_ok` / D).
__device__ __forceinline__ void load_f32(float* s, const float* src, int rows, int rows_ok, int D, int ld) {
  for (int i = threadIdx.x; i < rows * ld; i += kThreads) {
    const int r = i / ld, c = i - r * ld;
    s[i] = r < rows_ok && c < D ? src[static_cast<int64_t>(r) * D + c] : 0.f;
  }
}

// The rel-pos tables [Rh rows; Rw rows] (already in T) into a padded smem tile of RTpad rows.
template <typename T, int DP>
__device__ __forceinline__ void load_rel(T* s, const Params& p, const Plan& pl) {
  const T* rh = static_cast<const T*>(p.rel_h);
  const T* rw = static_cast<const T*>(p.rel_w);
  for (int i = threadIdx.x; i < pl.RTpad * DP; i += kThreads) {
    const int r = i / DP, c = i - r * DP;
    T x = T(0.f);
    if (c < p.D && r < pl.Rh) x = rh[r * p.D + c];
    else if (c < p.D && r >= pl.Rh && r < pl.RT) x = rw[(r - pl.Rh) * p.D + c];
    s[r * (DP + kPad) + c] = x;
  }
}

// ============================================================================ operands in smem
// Where row r, column c (a multiple of 8) of a shared-memory operand lives. Padded: a [rows][DP +
// kPad] tile. Gathered: a head's rows resident in smem ([N][64], 16-byte chunks XOR-swizzled by
// row so that ldmatrix rows hit distinct banks), row r of the operand being token tok[r]; tok < 0
// reads a zero row. The tensor-core helpers take either, or a plain pointer (a padded tile).
template <typename T, int DP>
struct Padded {
  const T* p;
  __device__ __forceinline__ const T* at(int r, int c) const { return p + r * (DP + kPad) + c; }
  __device__ __forceinline__ Padded rows(int r) const { return Padded{p + r * (DP + kPad)}; }
};

constexpr int kResidentDim = 64;  // head dim of the resident rows
__host__ __device__ __forceinline__ int swizzled(int tok, int c) {
  return tok * kResidentDim + ((((c >> 3) ^ tok) & 7) << 3) + (c & 7);
}

template <typename T>
struct Gathered {
  const T* base;
  const int* tok;
  const T* zero;
  __device__ __forceinline__ const T* at(int r, int c) const {
    const int t = tok[r];
    return t < 0 ? zero + c : base + swizzled(t, c);
  }
  __device__ __forceinline__ Gathered rows(int r) const { return Gathered{base, tok + r, zero}; }
};

template <typename T, int DP>
__device__ __forceinline__ Padded<T, DP> as_op(const T* p) {
  return Padded<T, DP>{p};
}
template <typename T, int DP>
__device__ __forceinline__ Padded<T, DP> as_op(T* p) {
  return Padded<T, DP>{p};
}
template <typename T, int DP>
__device__ __forceinline__ Padded<T, DP> as_op(const Padded<T, DP>& p) {
  return p;
}
template <typename T, int DP>
__device__ __forceinline__ Gathered<T> as_op(const Gathered<T>& g) {
  return g;
}

// ============================================================================ warp tile math
// Unroll factor of loops whose steps read their fragments from smem (no register array indexed
// by the loop variable): fully unrolled for head dims <= 64, rolled for wider heads.
template <int DP>
constexpr int kRollWide = DP <= 64 ? 8 : 1;

// A warp owns 16 rows of every product; a thread holds rows g and g + 8 of them (mma C fragment,
// window_attention_mma.cuh), columns j*8 + 2*tq + {0, 1} of n8 tile j.
template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
}

// f(j, e, col, r) for every element e of every n8 tile j of a 16 x 8N product: its column and
// its thread row r (g + 8r of the warp's 16).
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

// The warp's A fragments of rows row0..row0+15 of an operand, all DP columns.
template <typename T, int DP, typename AOp>
__device__ __forceinline__ void load_a(uint32_t (&af)[DP / 16][4], const AOp& a_, int row0, int lane) {
  const auto a = as_op<T, DP>(a_);
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) ldsm_x4(af[kk], a.at(row0 + lrow_a(lane), kk * 16 + lcol_a(lane)));
}

// S = A B^T over the head dim, A's fragments in registers, B the NB rows of an operand; only the
// 16-row chunks of B set in `on` are multiplied (the others stay 0).
template <typename T, int DP, int NB, typename BOp>
__device__ __forceinline__ void mma_abt(float (&s)[NB / 8][4], const uint32_t (&af)[DP / 16][4], const BOp& b_,
                                        int lane, unsigned on) {
  const auto b = as_op<T, DP>(b_);
  zero(s);
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
    for (int nn = 0; nn < NB / 16; ++nn) {
      if (!((on >> nn) & 1u)) continue;
      uint32_t bf[4];
      ldsm_x4(bf, b.at(nn * 16 + lrow_b(lane), kk * 16 + lcol_b(lane)));
      Mma<T>::run(s[2 * nn], af[kk], bf[0], bf[1]);
      Mma<T>::run(s[2 * nn + 1], af[kk], bf[2], bf[3]);
    }
  }
}

// S = A B^T with A rows a_row0..a_row0+15 of an operand (fragments loaded step by step).
template <typename T, int DP, int NB, typename AOp, typename BOp>
__device__ __forceinline__ void mma_abt_op(float (&s)[NB / 8][4], const AOp& a_, int a_row0, const BOp& b_, int lane,
                                           unsigned on) {
  const auto a = as_op<T, DP>(a_);
  const auto b = as_op<T, DP>(b_);
  zero(s);
#pragma unroll(kRollWide<DP>)
  for (int kk = 0; kk < DP / 16; ++kk) {
    uint32_t af[4];
    ldsm_x4(af, a.at(a_row0 + lrow_a(lane), kk * 16 + lcol_a(lane)));
#pragma unroll
    for (int nn = 0; nn < NB / 16; ++nn) {
      if (!((on >> nn) & 1u)) continue;
      uint32_t bf[4];
      ldsm_x4(bf, b.at(nn * 16 + lrow_b(lane), kk * 16 + lcol_b(lane)));
      Mma<T>::run(s[2 * nn], af, bf[0], bf[1]);
      Mma<T>::run(s[2 * nn + 1], af, bf[2], bf[3]);
    }
  }
}

// Two score products in one pass over the head dim: S = A B^T and S2 = A2 B2^T, A and A2 rows
// a_row0..a_row0+15 of their operands, B and B2 the NB rows of theirs (chunks in `on`).
template <typename T, int DP, int NB, typename AOp, typename AOp2, typename BOp, typename BOp2>
__device__ __forceinline__ void mma_abt_pair(float (&s)[NB / 8][4], float (&s2)[NB / 8][4], const AOp& a_,
                                             const AOp2& a2_, int a_row0, const BOp& b_, const BOp2& b2_, int lane,
                                             unsigned on) {
  const auto a = as_op<T, DP>(a_), a2 = as_op<T, DP>(a2_);
  const auto b = as_op<T, DP>(b_), b2 = as_op<T, DP>(b2_);
  zero(s);
  zero(s2);
  // Wide heads: the head-dim loop stays rolled (its fragments come from smem each step), so that
  // the compiler does not hoist every step's loads beside the accumulators (spills at D 128).
#pragma unroll(kRollWide<DP>)
  for (int kk = 0; kk < DP / 16; ++kk) {
    uint32_t af[4], af2[4];
    ldsm_x4(af, a.at(a_row0 + lrow_a(lane), kk * 16 + lcol_a(lane)));
    ldsm_x4(af2, a2.at(a_row0 + lrow_a(lane), kk * 16 + lcol_a(lane)));
#pragma unroll
    for (int nn = 0; nn < NB / 16; ++nn) {
      if (!((on >> nn) & 1u)) continue;
      uint32_t bf[4], bf2[4];
      ldsm_x4(bf, b.at(nn * 16 + lrow_b(lane), kk * 16 + lcol_b(lane)));
      ldsm_x4(bf2, b2.at(nn * 16 + lrow_b(lane), kk * 16 + lcol_b(lane)));
      Mma<T>::run(s[2 * nn], af, bf[0], bf[1]);
      Mma<T>::run(s[2 * nn + 1], af, bf[2], bf[3]);
      Mma<T>::run(s2[2 * nn], af2, bf2[0], bf2[1]);
      Mma<T>::run(s2[2 * nn + 1], af2, bf2[2], bf2[3]);
    }
  }
}

// acc += P B: P (16 x NB) the warp's C fragments of the previous product, B an NB x DP operand;
// k-steps (16 rows of B) in `on` only.
template <typename T, int DP, int NB, typename BOp>
__device__ __forceinline__ void mma_acc_pb(float (&acc)[DP / 8][4], const float (&pc)[NB / 8][4], const BOp& b_,
                                           int lane, unsigned on) {
  const auto b = as_op<T, DP>(b_);
#pragma unroll
  for (int kk = 0; kk < NB / 16; ++kk) {
    if (!((on >> kk) & 1u)) continue;
    uint32_t a[4];
    acc_to_a<T>(a, pc, kk);
#pragma unroll
    for (int dd = 0; dd < DP / 16; ++dd) {
      uint32_t bf[4];
      ldsm_x4_t(bf, b.at(kk * 16 + lrow_a(lane), dd * 16 + lcol_a(lane)));
      Mma<T>::run(acc[2 * dd], a, bf[0], bf[1]);
      Mma<T>::run(acc[2 * dd + 1], a, bf[2], bf[3]);
    }
  }
}

// Both at once, sharing the k-steps: acc += P B and acc2 += P2 B2.
template <typename T, int DP, int NB, typename BOp, typename BOp2>
__device__ __forceinline__ void mma_acc_pb_pair(float (&acc)[DP / 8][4], const float (&pc)[NB / 8][4], const BOp& b_,
                                                float (&acc2)[DP / 8][4], const float (&pc2)[NB / 8][4],
                                                const BOp2& b2_, int lane, unsigned on) {
  const auto b = as_op<T, DP>(b_), b2 = as_op<T, DP>(b2_);
#pragma unroll
  for (int kk = 0; kk < NB / 16; ++kk) {
    if (!((on >> kk) & 1u)) continue;
    uint32_t a[4], a2[4];
    acc_to_a<T>(a, pc, kk);
    acc_to_a<T>(a2, pc2, kk);
#pragma unroll
    for (int dd = 0; dd < DP / 16; ++dd) {
      uint32_t bf[4], bf2[4];
      ldsm_x4_t(bf, b.at(kk * 16 + lrow_a(lane), dd * 16 + lcol_a(lane)));
      ldsm_x4_t(bf2, b2.at(kk * 16 + lrow_a(lane), dd * 16 + lcol_a(lane)));
      Mma<T>::run(acc[2 * dd], a, bf[0], bf[1]);
      Mma<T>::run(acc[2 * dd + 1], a, bf[2], bf[3]);
      Mma<T>::run(acc2[2 * dd], a2, bf2[0], bf2[1]);
      Mma<T>::run(acc2[2 * dd + 1], a2, bf2[2], bf2[3]);
    }
  }
}

// acc += A[:, col0:col0+16]^T B and acc2 += A2[:, col0:col0+16]^T B2: A, A2 staged row-major
// [64][lda] in smem (rows = the contraction index, e.g. P and dS with rows = queries), B, B2
// 64 x DP operands with the same rows; the A^T fragments come straight from ldmatrix.trans.
// k-steps (16 rows) in `on` only. The single pass's dV = P^T dO and dK = dS^T Q.
template <typename T, int DP, typename BOp, typename BOp2>
__device__ __forceinline__ void mma_acc_tb_pair(float (&acc)[DP / 8][4], const T* a, const BOp& b_,
                                                float (&acc2)[DP / 8][4], const T* a2, const BOp2& b2_, int lda,
                                                int col0, int lane, unsigned on) {
  const auto b = as_op<T, DP>(b_), b2 = as_op<T, DP>(b2_);
#pragma unroll(kRollWide<DP>)
  for (int kk = 0; kk < kRows / 16; ++kk) {
    if (!((on >> kk) & 1u)) continue;
    uint32_t af[4], af2[4];
    ldsm_x4_t(af, a + (kk * 16 + lrow_b(lane)) * lda + col0 + lcol_b(lane));
    ldsm_x4_t(af2, a2 + (kk * 16 + lrow_b(lane)) * lda + col0 + lcol_b(lane));
#pragma unroll
    for (int dd = 0; dd < DP / 16; ++dd) {
      uint32_t bf[4], bf2[4];
      ldsm_x4_t(bf, b.at(kk * 16 + lrow_a(lane), dd * 16 + lcol_a(lane)));
      ldsm_x4_t(bf2, b2.at(kk * 16 + lrow_a(lane), dd * 16 + lcol_a(lane)));
      Mma<T>::run(acc[2 * dd], af, bf[0], bf[1]);
      Mma<T>::run(acc[2 * dd + 1], af, bf[2], bf[3]);
      Mma<T>::run(acc2[2 * dd], af2, bf2[0], bf2[1]);
      Mma<T>::run(acc2[2 * dd + 1], af2, bf2[2], bf2[3]);
    }
  }
}

// One key block of the online softmax (logits s in log2 units, updated to their exponentials):
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

// The warp's C fragments (rows g, g + 8 of its 16: tokens tok[0], tok[1], -1 = none) times `mul`
// into rows of a strided (N, D) head, two elements (4 bytes) a store.
template <typename T, int DP>
__device__ __forceinline__ void store_acc(T* dst, int64_t sn, const float (&acc)[DP / 8][4], const int (&tok)[2],
                                          int D, float mul, int tq) {
#pragma unroll
  for (int j = 0; j < DP / 8; ++j) {
    const int col = j * 8 + 2 * tq;
    if (col >= D) continue;
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (tok[r] >= 0)
        *reinterpret_cast<uint32_t*>(dst + tok[r] * sn + col) =
            Mma<T>::pack(acc[j][2 * r] * mul, acc[j][2 * r + 1] * mul);
  }
}

}  // namespace wa
}  // namespace vitpose
