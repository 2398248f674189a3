// window_attention: fused windowed attention on tensor cores (mma.sync, sm_80 and later), the
// same algorithm as the Triton v2 kernels (vitpose_kernels/triton_backend/window_attention,
// "Design note"); the spec is vitpose_kernels/reference/window_attention.py. Layout and plan:
// window_attention_tiles.cuh.
//
// Forward (launch order):
//   wa_pool_kernel        extra_kv = [the P pooled tile means of k, v (unshifted tiling; fp32
//                         sums, strided reads of k and v as they are); copies of the G global
//                         tokens] in q's dtype; saved by the op (small), never recomputed.
//   wa_fwd_kernel<grid>   the grid queries: per block of packed tiles, S = q k^T masked by cell id
//                         (+ relative position, q . [Rh; Rw]^T computed in-kernel into shared
//                         memory), online softmax, then the E extra keys as one more key block of
//                         the same softmax (resident in shared memory for the CTA when E <= 64).
//                         Small tiles: a CTA walks kBlocksPerCta blocks, the next block's q, k, v
//                         copied while the current one computes; large tiles: a CTA is one
//                         64-query block of a tile, its key blocks double-buffered.
//   wa_fwd_kernel<global> the G global query rows over all N keys (their own kernel: no branch on
//                         the row kind in the grid kernel).
//   lse is saved in natural-log units (the op's unit for every backend).
//
// Backward (deterministic: every output row and every partial-sum slot has exactly one writer,
// partial sums are added in a fixed order, no atomics):
//   wa_prep_kernel        (pooling, or large tiles) delta = rowsum(dO * O) of the grid rows into
//                         the workspace, and with pooling the extra keys' gradients from those
//                         rows, dK_x = dS_x^T q, dV_x = P_x^T dO, as float32 partial slots (one
//                         per CTA when E <= 64, else per block).
//   wa_dq_kernel<global>  (G > 0) delta and dq of the global rows over all N keys; the global
//                         keys' partial gradients from the global queries (one slot per block).
//   wa_reduce_kernel      per extra key, its slots added in slot order: pooled keys' gradients to
//                         the workspace (float32, spread by the tile kernels), global tokens'
//                         straight into their dk, dv rows.
//   wa_tile_kernel        small tiles, the single pass: per block one S = q k^T and dP = dO v^T
//                         (warps own query rows), P and dS staged in shared memory, dq = dS k;
//                         then warps own key rows: dv = P^T dO, dk = dS^T q (FlashAttention-2's
//                         five products, ldmatrix.trans for the transposes); dq += the extra keys'
//                         share; dk, dv += the global queries' share, and the pooled keys'
//                         reduced gradients / tile size (the mean's backward); without pooling
//                         the extra keys' partial slots; relative position's dq term and
//                         d rel_pos partial sums.
//   wa_dkv_kernel, wa_dq_kernel<grid>  large tiles: dk, dv per key block over the tile's query
//                         blocks and the global queries; dq per query block over the tile's key
//                         blocks and the extra keys (FlashAttention-2's split, no atomics).
//   wa_reduce_kernel      (no pooling, G > 0) the global keys' slots, after the grid kernels.
//   wa_rel_reduce_kernel  d rel_pos: its partial slots added in a fixed order.
// dq, dk, dv are written once, in the caller's layout (strided views of one (B, N, 3, H, D)
// gradient for packed qkv). Each CTA is 4 warps; every tensor-core product is mma.sync m16n8k16.
//
// Head-resident path (pooling, no global tokens or rel-pos, head dim 33..64, the head fitting in
// shared memory: ViTPose-B at 1/8 features, the issue's target): wa_fwd_resident_kernel and
// wa_bwd_resident_kernel replace all of the above with one CTA per (batch, head), so that q, k,
// v, dO and O are each read once (see "head-resident path" below). VITPOSE_CUDA_RESIDENT=0 (read
// by the Python launcher) turns it off.
//
// Not here (owed to a GPU session / future work): a wgmma (sm_90a) path. It needs the operands
// in shared memory in wgmma's layouts and warpgroup-wide accumulators, and it could only be
// checked on the CPU after extending tests/cuda_emulator with a PTX-ISA model of
// wgmma.mma_async and its fence / commit_group / wait_group semantics, which does not exist yet;
// mma.sync (sm_80+) is the one, portable path, and runs on sm_90a as well.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common.h"
#include "window_attention_mma.cuh"
#include "window_attention_params.cuh"
#include "window_attention_tiles.cuh"

namespace vitpose {
namespace wa {
namespace {

constexpr const char* kOp = "window_attention";

// ============================================================================ shared memory
// Carves the dynamic shared memory of a launch; the host runs the same code for the size.
struct Carve {
  size_t off = 0;
  template <typename U>
  __host__ __device__ size_t take(size_t n) {
    const size_t o = (off + 15) / 16 * 16;
    off = o + n * sizeof(U);
    return o;
  }
};

template <typename T, int DP>
struct FwdSmem {
  size_t q, k, v, qm, km, xm, xk, xv, rel, qr, total;
  __host__ __device__ FwdSmem(const Plan& pl, bool global) {
    constexpr int LD = DP + kPad;
    Carve c;
    q = c.take<T>(2 * kRows * LD);
    k = c.take<T>(2 * kRows * LD);
    v = c.take<T>(2 * kRows * LD);
    qm = c.take<int>(2 * 3 * kRows);
    km = c.take<int>(2 * 3 * kRows);
    const int ex = global ? 0 : pl.Epad;
    xm = c.take<int>(3 * kRows);
    xk = c.take<T>(ex * LD);
    xv = c.take<T>(ex * LD);
    const int rt = global ? 0 : pl.RTpad;
    rel = c.take<T>(rt * LD);
    qr = c.take<float>(rt * kRows);
    total = c.off;
  }
};

template <typename T>
__device__ __forceinline__ T* at(unsigned char* base, size_t off) {
  return reinterpret_cast<T*>(base + off);
}

// ============================================================================ forward: extra keys
// Block i < ntyp: the pooled means of tile row i (unshifted tiling) of k and v, sums in float32 over
// the tile's members in row-major order, 8 head-dim elements a thread (16-byte loads of k, v as they
// are, strided). Block ntyp: the G global tokens' k, v copied after them.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) wa_pool_kernel(const Params p, const Plan pl) {
  const int bh = blockIdx.y, i = blockIdx.x, D = p.D, D8 = D / 8;
  const T* kh = head_of<T>(p.k, bh, p.H);
  const T* vh = head_of<T>(p.v, bh, p.H);
  T* xk = static_cast<T*>(p.extra) + static_cast<int64_t>(bh) * pl.E * D;
  T* xv = xk + static_cast<int64_t>(pl.BH) * pl.E * D;
  if (i < pl.ntyp) {
    const int y0 = i * pl.wh, rows = min(pl.wh, pl.Hg - y0);
    for (int job = threadIdx.x; job < 2 * pl.ntw * D8; job += kThreads) {
      const int tensor = job / (pl.ntw * D8), rest = job - tensor * pl.ntw * D8;
      const int tx = rest / D8, ch = rest - tx * D8;
      const T* src = tensor ? vh : kh;
      const int64_t sn = tensor ? p.v.sn : p.k.sn;
      const int x0 = tx * pl.ww, cols = min(pl.ww, pl.Wg - x0);
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < cols; ++c) {
          const int tok = pl.G + (y0 + r) * pl.Wg + x0 + c;
          const uint4 raw = *reinterpret_cast<const uint4*>(src + tok * sn + ch * 8);
          const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
          for (int u = 0; u < 8; ++u) acc[u] += Mma<T>::to_float(e[u]);
        }
      }
      const float cnt = static_cast<float>(rows * cols);
      uint4 outv;
      uint32_t* o32 = reinterpret_cast<uint32_t*>(&outv);
#pragma unroll
      for (int u = 0; u < 4; ++u) o32[u] = Mma<T>::pack(acc[2 * u] / cnt, acc[2 * u + 1] / cnt);
      T* dst = tensor ? xv : xk;
      *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(i * pl.ntw + tx) * D + ch * 8) = outv;
    }
  } else {
    for (int job = threadIdx.x; job < 2 * pl.G * D8; job += kThreads) {
      const int tensor = job / (pl.G * D8), rest = job - tensor * pl.G * D8;
      const int g = rest / D8, ch = rest - g * D8;
      const T* src = tensor ? vh : kh;
      const int64_t sn = tensor ? p.v.sn : p.k.sn;
      T* dst = tensor ? xv : xk;
      *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(pl.P + g) * D + ch * 8) =
          *reinterpret_cast<const uint4*>(src + g * sn + ch * 8);
    }
  }
}

// ============================================================================ rel-pos pieces
// qr = q . [Rh; Rw]^T for the warp's 16 rows (A fragments qf) into its rows of the float32 table
// sQR [64][RTpad]: the bias of a (query, key) pair of one cell is then two table reads.
template <typename T, int DP>
__device__ __forceinline__ void rel_table(float* sQR, const T* sR, const uint32_t (&qf)[DP / 16][4], const Plan& pl,
                                          int row0, int lane) {
  constexpr int LD = DP + kPad;
  const int g = lane >> 2, tq = lane & 3;
  for (int c0 = 0; c0 < pl.RTpad; c0 += 64) {
    unsigned on = 0;
    for (int nn = 0; nn < 4; ++nn) on |= (c0 + nn * 16 < pl.RTpad ? 1u : 0u) << nn;
    float acc[8][4];
    mma_abt<T, DP, 64>(acc, qf, sR + c0 * LD, lane, on);
    for_each_acc<8>(tq, [&](int j, int e, int col, int r) {
      if (c0 + col < pl.RTpad) sQR[(row0 + g + 8 * r) * pl.RTpad + c0 + col] = acc[j][e];
    });
  }
}

// The decomposed relative-position logit of a (query, key) pair of one cell (local coordinates
// qyx, kyx packed y << 16 | x), from the query's row of the table.
__device__ __forceinline__ float rel_bias(const float* qr_row, const Plan& pl, int qyx, int kyx) {
  float b = 0.f;
  if (pl.Rh) b += qr_row[(qyx >> 16) - (kyx >> 16) + pl.wh - 1];
  if (pl.Rw) b += qr_row[pl.Rh + (qyx & 0xffff) - (kyx & 0xffff) + pl.ww - 1];
  return b;
}

// ============================================================================ forward
// kGlobal: the CTA is global query block blockIdx.x, keys all N tokens. Else the grid rows: small
// tiles, CTA = kBlocksPerCta blocks of SPB tiles (each block its own key block); large tiles, CTA
// = query block qb of tile t (blockIdx.x = t * QB + qb), keys the tile's blocks.
template <typename T, int DP, bool kGlobal>
__global__ void __launch_bounds__(kThreads, 1) wa_fwd_kernel(const Params p, const Plan pl) {
  constexpr int LD = DP + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const FwdSmem<T, DP> L(pl, kGlobal);
  T* sQ = at<T>(smem_raw, L.q);
  T* sK = at<T>(smem_raw, L.k);
  T* sV = at<T>(smem_raw, L.v);
  T* sXk = at<T>(smem_raw, L.xk);
  T* sXv = at<T>(smem_raw, L.xv);
  T* sR = at<T>(smem_raw, L.rel);
  float* sQR = at<float>(smem_raw, L.qr);
  int* const qmeta_base = at<int>(smem_raw, L.qm);
  int* const kmeta_base = at<int>(smem_raw, L.km);
  auto qmeta = [&](int i) { return meta_at(qmeta_base + (i & 1) * 3 * kRows); };
  auto kmeta = [&](int i) { return meta_at(kmeta_base + (i & 1) * 3 * kRows); };
  const Meta xmeta = meta_at(at<int>(smem_raw, L.xm));

  const int bh = blockIdx.y, cta = blockIdx.x;
  const T* qh = head_of<T>(p.q, bh, p.H);
  const T* kh = head_of<T>(p.k, bh, p.H);
  const T* vh = head_of<T>(p.v, bh, p.H);
  const T* xkh = static_cast<const T*>(p.extra) + static_cast<int64_t>(bh) * pl.E * p.D;
  const T* xvh = xkh + static_cast<int64_t>(pl.BH) * pl.E * p.D;

  // The CTA's query blocks (nq) and key blocks per query block (nk).
  int nq = 1, nk, j0 = 0, t = 0, qb = 0;
  if (kGlobal) {
    nk = cdiv(p.N, kRows);
  } else if (pl.small) {
    j0 = cta * kBlocksPerCta;
    nq = min(kBlocksPerCta, pl.nblocks - j0);
    nk = 1;
  } else {
    t = cta / pl.QB;
    qb = cta - t * pl.QB;
    const int count = tile_count(pl, t);
    if (qb * kRows >= count) return;  // an empty block of a partial tile (uniform over the CTA)
    nk = cdiv(count, kRows);
  }
  auto qrows = [&](int j) {
    if (kGlobal) return range_rows(cta * kRows, pl.G);
    if (pl.small) {
      const int t0 = (j0 + j) * pl.SPB;
      return tile_rows(t0, min(pl.SPB, pl.T - t0), 0, pl.RB);
    }
    return tile_rows(t, 1, qb * kRows, kRows);
  };
  auto krows = [&](int j, int kb) {
    if (kGlobal) return range_rows(kb * kRows, p.N);
    if (pl.small) return qrows(j);
    return tile_rows(t, 1, kb * kRows, kRows);
  };
  const int nsteps = nq * nk;
  auto fill = [&](int s) {
    const int j = s / nk, kb = s - j * nk;
    if (kb == 0) fill_meta(qmeta(j), qrows(j), pl, kRows);
    fill_meta(kmeta(s), krows(j, kb), pl, kRows);
  };
  auto issue = [&](int s) {
    const int j = s / nk, kb = s - j * nk;
    if (kb == 0) load_tile<T, DP>(sQ + (j & 1) * kRows * LD, qh, p.q.sn, qmeta(j).tok, kRows, p.D);
    load_tile<T, DP>(sK + (s & 1) * kRows * LD, kh, p.k.sn, kmeta(s).tok, kRows, p.D);
    load_tile<T, DP>(sV + (s & 1) * kRows * LD, vh, p.v.sn, kmeta(s).tok, kRows, p.D);
  };

  const bool extra = !kGlobal && pl.E > 0;
  const bool rel = !kGlobal && pl.RT > 0;
  fill(0);
  if (extra && pl.xres) fill_meta(xmeta, range_rows(0, pl.E), pl, kRows);
  if (rel) load_rel<T, DP>(sR, p, pl);
  __syncthreads();
  issue(0);
  if (extra && pl.xres) {  // the extra keys, once for the whole CTA
    load_tile<T, DP>(sXk, xkh, p.D, xmeta.tok, pl.Epad, p.D);
    load_tile<T, DP>(sXv, xvh, p.D, xmeta.tok, pl.Epad, p.D);
  }
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int row0 = warp * 16;
  const float scale_log2 = p.scale * kLog2e;
  uint32_t qf[DP / 16][4];
  float o[DP / 8][4];
  float m[2], l[2];
  int qtok[2], qgrp[2], qlyx[2];
  bool warp_on = false;

  for (int s = 0; s < nsteps; ++s) {
    cp_async_wait<0>();
    __syncthreads();  // step s's tiles and metadata visible; every warp is done with step s - 1
    if (s + 1 < nsteps) fill(s + 1);
    __syncthreads();
    if (s + 1 < nsteps) {  // step s + 1's copies overlap step s's products
      issue(s + 1);
      cp_async_commit();
    }
    const int j = s / nk, kb = s - j * nk;
    const Meta qm = qmeta(j);
    const Meta km = kmeta(s);
    if (kb == 0) {  // a new query block
      warp_on = qm.tok[row0] >= 0;
      zero(o);
      m[0] = m[1] = -INFINITY;
      l[0] = l[1] = 0.f;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        qtok[r] = qm.tok[row0 + g + 8 * r];
        qgrp[r] = qm.grp[row0 + g + 8 * r];
        qlyx[r] = qm.lyx[row0 + g + 8 * r];
      }
      if (warp_on) {
        load_a<T, DP>(qf, sQ + (j & 1) * kRows * LD, row0, lane);
        if (rel) rel_table<T, DP>(sQR, sR, qf, pl, row0, lane);
      }
      __syncwarp();
    }
    if (warp_on) {
      const unsigned on = (kGlobal || !pl.small) ? live_chunks(km, kRows) : same_tile_chunks(km, kRows, row0);
      float sc[8][4];
      mma_abt<T, DP, 64>(sc, qf, sK + (s & 1) * kRows * LD, lane, on);
      for_each_acc<8>(tq, [&](int jj, int e, int col, int r) {
        const bool ok = ((on >> (col >> 4)) & 1u) && km.tok[col] >= 0 && (kGlobal || km.grp[col] == qgrp[r]);
        float x = -INFINITY;
        if (ok) {
          x = sc[jj][e] * scale_log2;
          if (rel) x += kLog2e * rel_bias(sQR + (row0 + g + 8 * r) * pl.RTpad, pl, qlyx[r], km.lyx[col]);
        }
        sc[jj][e] = x;
      });
      online_softmax<DP, 64>(sc, o, m, l);
      mma_acc_pb<T, DP, 64>(o, sc, sV + (s & 1) * kRows * LD, lane, on);
    }
    if (kb != nk - 1) continue;

    // ---- end of the query block: the extra keys, one more block of the same softmax
    if (extra) {
      for (int e0 = 0; e0 < pl.E; e0 += kRows) {
        if (!pl.xres) {  // more than 64 extra keys: one block of them at a time (uniform over the CTA)
          __syncthreads();
          fill_meta(xmeta, range_rows(e0, pl.E), pl, kRows);
          __syncthreads();
          load_tile<T, DP>(sXk, xkh, p.D, xmeta.tok, kRows, p.D);
          load_tile<T, DP>(sXv, xvh, p.D, xmeta.tok, kRows, p.D);
          cp_async_commit();
          cp_async_wait<0>();
          __syncthreads();
        }
        const int n = min(pl.E - e0, pl.xres ? pl.Epad : kRows);
        if (warp_on) {
          unsigned on = 0;
          for (int nn = 0; nn < 4; ++nn) on |= (nn * 16 < n ? 1u : 0u) << nn;
          float sc[8][4];
          mma_abt<T, DP, 64>(sc, qf, sXk, lane, on);
          for_each_acc<8>(tq, [&](int jj, int e, int col, int r) {
            sc[jj][e] = e0 + col < pl.E && col < n ? sc[jj][e] * scale_log2 : -INFINITY;
          });
          online_softmax<DP, 64>(sc, o, m, l);
          mma_acc_pb<T, DP, 64>(o, sc, sXv, lane, on);
        }
      }
    }
    if (warp_on) {
      float inv[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        inv[r] = l[r] > 0.f ? 1.f / l[r] : 0.f;
      }
#pragma unroll
      for (int jj = 0; jj < DP / 8; ++jj) {
        o[jj][0] *= inv[0];
        o[jj][1] *= inv[0];
        o[jj][2] *= inv[1];
        o[jj][3] *= inv[1];
      }
      const int64_t base = static_cast<int64_t>(bh) * p.N;
      store_acc<T, DP>(static_cast<T*>(p.out) + base * p.D, p.D, o, qtok, p.D, 1.f, tq);
      if (tq == 0) {
#pragma unroll
        for (int r = 0; r < 2; ++r)
          if (qtok[r] >= 0) p.lse[base + qtok[r]] = l[r] > 0.f ? (m[r] + log2f(l[r])) * kLn2 : INFINITY;
      }
    }
  }
}

// ============================================================================ backward: pieces
// Row statistics of the rows of a block (threads < rows): lse in log2 units (+inf for absent rows,
// so that their probabilities are 0) and delta from the workspace (0 for absent rows).
__device__ __forceinline__ void row_stats(float* lse2, float* delta, const Meta& m, int rows, const Params& p,
                                          const Plan& pl, int bh, bool with_delta) {
  const int r = threadIdx.x;
  if (r >= rows) return;
  const int tok = m.tok[r];
  const int64_t row = static_cast<int64_t>(bh) * p.N + tok;
  lse2[r] = tok >= 0 ? p.lse[row] * kLog2e : INFINITY;
  if (with_delta) delta[r] = tok >= 0 ? p.work[pl.ws_delta + row] : 0.f;
}

// delta = rowsum(dO * O) of a block's rows (two threads a row, float32), into smem and, when
// `store`, into the workspace.
template <typename T, int DP, typename OOp>
__device__ __forceinline__ void delta_rows(float* delta, const T* sO, const OOp& sdO_, const Meta& m, const Params& p,
                                           const Plan& pl, int bh, bool store) {
  constexpr int LD = DP + kPad;
  const auto sdO = as_op<T, DP>(sdO_);
  const int r = threadIdx.x >> 1, half = threadIdx.x & 1;
  float acc = 0.f;
  for (int c8 = half * (DP / 16); c8 < (half + 1) * (DP / 16); ++c8) {
    const T* d8 = sdO.at(r, c8 * 8);
    for (int u = 0; u < 8; ++u) acc += Mma<T>::to_float(sO[r * LD + c8 * 8 + u]) * Mma<T>::to_float(d8[u]);
  }
  acc += __shfl_xor_sync(0xffffffffu, acc, 1);
  if (!half) {
    const int tok = m.tok[r];
    delta[r] = tok >= 0 ? acc : 0.f;
    if (store && tok >= 0) p.work[pl.ws_delta + static_cast<int64_t>(bh) * p.N + tok] = acc;
  }
}

// Keys-own orientation, one block of queries: for the warp's 16 key rows (row0.. of sAk, sAv)
// against the query rows of sBq, sBdo (NB of them, 16-row chunks in `on`): P^T = exp2(logit -
// lse2[query]), dS^T = P^T (dP^T - delta[query]); dv += P^T dO, dk += dS^T q. logit(col, r, x)
// gets the scaled score (log2 units) and returns it with any bias, or -inf where masked.
// kOnly: kBoth, or kDvOnly / kDkOnly (one accumulator live: wide heads split the work in two passes).
enum KvPart : int { kBoth = 0, kDvOnly = 1, kDkOnly = 2 };
template <typename T, int DP, int NB, int kOnly = kBoth, typename AOp, typename AOp2, typename BOp, typename BOp2,
          typename Logit>
__device__ __forceinline__ void kv_step(float (&dk)[DP / 8][4], float (&dv)[DP / 8][4], const AOp& sAk,
                                        const AOp2& sAv, int row0, const BOp& sBq, const BOp2& sBdo, const float* lse2,
                                        const float* delta, unsigned on, float scale_log2, int lane,
                                        const Logit& logit) {
  float s[NB / 8][4], dp[NB / 8][4];
  if (kOnly == kDvOnly) {
    zero(dp);
    mma_abt_op<T, DP, NB>(s, sAk, row0, sBq, lane, on);
  } else {
    mma_abt_pair<T, DP, NB>(s, dp, sAk, sAv, row0, sBq, sBdo, lane, on);
  }
  for_each_acc<NB / 8>(lane & 3, [&](int j, int e, int col, int r) {
    const float x = ((on >> (col >> 4)) & 1u) ? logit(col, r, s[j][e] * scale_log2) : -INFINITY;
    const float pr = exp2f(x - lse2[col]);
    s[j][e] = pr;
    dp[j][e] = pr * (dp[j][e] - delta[col]);
  });
  if (kOnly == kDvOnly)
    mma_acc_pb<T, DP, NB>(dv, s, sBdo, lane, on);
  else if (kOnly == kDkOnly)
    mma_acc_pb<T, DP, NB>(dk, dp, sBq, lane, on);
  else
    mma_acc_pb_pair<T, DP, NB>(dv, s, sBdo, dk, dp, sBq, lane, on);
}

// kv_step over a loaded block of up to 64 query rows, in NB-row pieces (32 for wide heads: two
// 16 x NB score tiles next to the dk, dv accumulators stay within the register budget).
template <typename T, int DP, int kOnly = kBoth, typename AOp, typename AOp2, typename BOp, typename BOp2,
          typename Logit>
__device__ __forceinline__ void kv_block(float (&dk)[DP / 8][4], float (&dv)[DP / 8][4], const AOp& sAk,
                                         const AOp2& sAv, int row0, const BOp& sBq_, const BOp2& sBdo_,
                                         const float* lse2, const float* delta, unsigned on, float scale_log2,
                                         int lane, const Logit& logit) {
  constexpr int NB = DP <= 64 ? 64 : 32;
  const auto sBq = as_op<T, DP>(sBq_);
  const auto sBdo = as_op<T, DP>(sBdo_);
#pragma unroll
  for (int h = 0; h < kRows / NB; ++h) {
    const unsigned part = (on >> (h * NB / 16)) & ((1u << (NB / 16)) - 1u);
    if (!part) continue;
    kv_step<T, DP, NB, kOnly>(dk, dv, sAk, sAv, row0, sBq.rows(h * NB), sBdo.rows(h * NB), lse2 + h * NB,
                              delta + h * NB, part, scale_log2, lane,
                              [&](int col, int r, float x) { return logit(h * NB + col, r, x); });
  }
}

// The extra keys' gradients from a block of query rows (keys-own orientation, warps own extra rows
// 16w.. of the n loaded ones), added to dk (dS_x^T q, before the scale) and dv (P_x^T dO).
template <typename T, int DP, int kOnly = kBoth, typename BOp, typename BOp2>
__device__ __forceinline__ void extra_grads(float (&dk)[DP / 8][4], float (&dv)[DP / 8][4], const T* sXk,
                                            const T* sXv, int n, const BOp& sQ, const BOp2& sdO, const float* lse2,
                                            const float* delta, unsigned qon, float scale_log2, int warp, int lane) {
  if (16 * warp >= n) return;
  kv_block<T, DP, kOnly>(dk, dv, sXk, sXv, 16 * warp, sQ, sdO, lse2, delta, qon, scale_log2, lane,
                         [](int, int, float x) { return x; });
}

// extra_grads into fresh accumulators, handed to sink(c, acc) for c = 0 (dk) and 1 (dv). Wide
// heads (> 64) take two passes with one accumulator each (the E x 64 scores computed twice): two
// 128-column accumulators beside the score tiles would spill.
template <typename T, int DP, typename BOp, typename BOp2, typename Sink>
__device__ __forceinline__ void extra_grads_to(const T* sXk, const T* sXv, int n, const BOp& sQ, const BOp2& sdO,
                                               const float* lse2, const float* delta, unsigned qon, float scale_log2,
                                               int warp, int lane, const Sink& sink) {
  if (DP <= 64) {
    float gk[DP / 8][4], gv[DP / 8][4];
    zero(gk);
    zero(gv);
    extra_grads<T, DP>(gk, gv, sXk, sXv, n, sQ, sdO, lse2, delta, qon, scale_log2, warp, lane);
    sink(0, gk);
    sink(1, gv);
  } else {
    float g[DP / 8][4];
    zero(g);
    extra_grads<T, DP, kDkOnly>(g, g, sXk, sXv, n, sQ, sdO, lse2, delta, qon, scale_log2, warp, lane);
    sink(0, g);
    zero(g);
    extra_grads<T, DP, kDvOnly>(g, g, sXk, sXv, n, sQ, sdO, lse2, delta, qon, scale_log2, warp, lane);
    sink(1, g);
  }
}

// A warp's float32 accumulator rows (rows row0 + g + 8r < n) into a contiguous (rows, D) matrix.
template <int DP>
__device__ __forceinline__ void store_f32(float* dst, const float (&acc)[DP / 8][4], int row0, int n, int D,
                                          int lane, bool add) {
  const int g = lane >> 2, tq = lane & 3;
  for_each_acc<DP / 8>(tq, [&](int j, int e, int col, int r) {
    const int row = row0 + g + 8 * r;
    if (row < n && col < D) {
      float* d = dst + static_cast<int64_t>(row) * D + col;
      *d = add ? *d + acc[j][e] : acc[j][e];
    }
  });
}

// The workspace's partial-sum slot `slot` of extra rows e0.. for (c = 0: keys, 1: values, bh).
__device__ __forceinline__ float* part_slot(const Params& p, const Plan& pl, int c, int bh, int slot, int e0) {
  return p.work + pl.ws_part + ((static_cast<int64_t>(c) * pl.BH + bh) * pl.npart + slot) * pl.E * p.D +
         static_cast<int64_t>(e0) * p.D;
}

// Queries-own orientation: the warp's 16 query rows (row0.. of sQ, sdO) against NB key rows of
// sK, sV (chunks `on`): P = exp2(logit - lse2), dS = P (dP - delta) left in s, dp; the caller
// multiplies on (dq += dS K).
template <typename T, int DP, int NB, typename AOp, typename AOp2, typename BOp, typename BOp2, typename Logit>
__device__ __forceinline__ void q_step(float (&s)[NB / 8][4], float (&dp)[NB / 8][4], const AOp& sQ, const AOp2& sdO,
                                       int row0, const BOp& sK, const BOp2& sV, const float (&lse2)[2],
                                       const float (&dlt)[2], unsigned on, float scale_log2, int lane,
                                       const Logit& logit) {
  mma_abt_pair<T, DP, NB>(s, dp, sQ, sdO, row0, sK, sV, lane, on);
  for_each_acc<NB / 8>(lane & 3, [&](int j, int e, int col, int r) {
    const float x = ((on >> (col >> 4)) & 1u) ? logit(col, r, s[j][e] * scale_log2) : -INFINITY;
    const float pr = exp2f(x - lse2[r]);
    s[j][e] = pr;
    dp[j][e] = pr * (dp[j][e] - dlt[r]);
  });
}

// dq += dS_x X_k over the extra keys loaded in sXk, sXv (n rows), queries-own orientation.
template <typename T, int DP, typename AOp, typename AOp2>
__device__ __forceinline__ void dq_extra(float (&dq)[DP / 8][4], const AOp& sQ, const AOp2& sdO, int row0,
                                         const T* sXk, const T* sXv, int n, const float (&lse2)[2],
                                         const float (&dlt)[2], float scale_log2, int lane) {
  constexpr int LD = DP + kPad;
  constexpr int NB = DP <= 64 ? 64 : 32;
#pragma unroll
  for (int h = 0; h < kRows / NB; ++h) {
    unsigned on = 0;
    for (int nn = 0; nn < NB / 16; ++nn) on |= (h * NB + nn * 16 < n ? 1u : 0u) << nn;
    if (!on) continue;
    float s[NB / 8][4], dp[NB / 8][4];
    q_step<T, DP, NB>(s, dp, sQ, sdO, row0, sXk + h * NB * LD, sXv + h * NB * LD, lse2, dlt, on, scale_log2, lane,
                      [&](int col, int, float x) { return h * NB + col < n ? x : -INFINITY; });
    mma_acc_pb<T, DP, NB>(dq, dp, sXk + h * NB * LD, lane, on);
  }
}

// Relative position, backward. sDR[row][r]: the logit gradients of query `row` summed per relative
// offset r (rows [Rh; Rw] of the tables), accumulated over key blocks from a float32 staging of dS
// (sdS32 [64][ld]): thread (row, axis) walks the keys in a fixed order (deterministic).
__device__ __forceinline__ void rel_accumulate(float* sDR, const float* sdS32, int ld, int ncols, const Meta& qm,
                                               const Meta& km, const Plan& pl) {
  const int row = threadIdx.x & 63, axis = threadIdx.x >> 6;
  if (qm.tok[row] < 0 || (axis == 0 ? !pl.Rh : !pl.Rw)) return;
  const int qyx = qm.lyx[row], grp = qm.grp[row];
  float* dst = sDR + row * pl.RTpad + (axis ? pl.Rh + pl.ww - 1 : pl.wh - 1);
  for (int c = 0; c < ncols; ++c) {
    if (km.tok[c] < 0 || km.grp[c] != grp) continue;
    const int kyx = km.lyx[c];
    const int off = axis ? (qyx & 0xffff) - (kyx & 0xffff) : (qyx >> 16) - (kyx >> 16);
    dst[off] += sdS32[row * ld + c];
  }
}

// dq += drel . R for the warp's accumulator rows (R rounded to T, the spec's table).
template <typename T, int DP>
__device__ __forceinline__ void rel_dq(float (&dq)[DP / 8][4], const float* sDR, const T* sR, const Plan& pl, int row0,
                                       int lane) {
  constexpr int LD = DP + kPad;
  const int g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float* drow = sDR + (row0 + g + 8 * r) * pl.RTpad;
    for (int i = 0; i < pl.RT; ++i) {
      const float d = drow[i];
      if (d == 0.f) continue;
#pragma unroll
      for (int j = 0; j < DP / 8; ++j) {
        dq[j][2 * r] += d * Mma<T>::to_float(sR[i * LD + j * 8 + 2 * tq]);
        dq[j][2 * r + 1] += d * Mma<T>::to_float(sR[i * LD + j * 8 + 2 * tq + 1]);
      }
    }
  }
}

// This block's share of d rel_pos, drel^T q (float32, rows in a fixed order), into its slot.
template <typename T, int DP>
__device__ __forceinline__ void rel_partial(const Params& p, const Plan& pl, const float* sDR, const T* sQ, int bh,
                                            int slot) {
  constexpr int LD = DP + kPad;
  float* dst = p.work + pl.ws_rel + (static_cast<int64_t>(bh) * pl.rel_slots + slot) * pl.RT * p.D;
  for (int i = threadIdx.x; i < pl.RT * p.D; i += kThreads) {
    const int r = i / p.D, c = i - r * p.D;
    float acc = 0.f;
    for (int row = 0; row < kRows; ++row) {
      const float d = sDR[row * pl.RTpad + r];
      if (d != 0.f) acc += d * Mma<T>::to_float(sQ[row * LD + c]);
    }
    dst[i] = acc;
  }
}

// The mean's backward: key row tok gets its pooled tile's reduced gradient / the tile's size
// (float32, from smem when the P rows fit there, else from the workspace).
template <int DP>
__device__ __forceinline__ void pool_spread(float (&dk)[DP / 8][4], float (&dv)[DP / 8][4], const int (&tok)[2],
                                            const float* xgk, const float* xgv, const Plan& pl, int lane) {
  const int tq = lane & 3;
  for_each_acc<DP / 8>(tq, [&](int j, int e, int col, int r) {
    if (tok[r] < 0 || col >= pl.D) return;
    float inv;
    const int64_t at = static_cast<int64_t>(pooled_index(pl, tok[r], inv)) * pl.D + col;
    dk[j][e] += xgk[at] * inv;
    dv[j][e] += xgv[at] * inv;
  });
}

// ============================================================================ backward: prep
template <typename T, int DP>
struct PrepSmem {
  size_t q, dout, o, meta, lse2, delta, xm, xk, xv, total;
  __host__ __device__ explicit PrepSmem(const Plan& pl) {
    constexpr int LD = DP + kPad;
    Carve c;
    const bool partials = pl.P > 0;
    q = c.take<T>(partials ? kRows * LD : 0);
    dout = c.take<T>(kRows * LD);
    o = c.take<T>(kRows * LD);
    meta = c.take<int>(3 * kRows);
    lse2 = c.take<float>(kRows);
    delta = c.take<float>(kRows);
    xm = c.take<int>(3 * kRows);
    xk = c.take<T>(partials ? pl.Epad * LD : 0);
    xv = c.take<T>(partials ? pl.Epad * LD : 0);
    total = c.off;
  }
};

// delta of the grid rows into the workspace and, with pooling, the extra keys' partial gradients
// from those rows. Same CTA decomposition as the tile kernel (small) / one block (large).
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads, 1) wa_prep_kernel(const Params p, const Plan pl) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const PrepSmem<T, DP> L(pl);
  T* sQ = at<T>(smem_raw, L.q);
  T* sdO = at<T>(smem_raw, L.dout);
  T* sO = at<T>(smem_raw, L.o);
  T* sXk = at<T>(smem_raw, L.xk);
  T* sXv = at<T>(smem_raw, L.xv);
  float* sLse2 = at<float>(smem_raw, L.lse2);
  float* sDelta = at<float>(smem_raw, L.delta);
  const Meta m = meta_at(at<int>(smem_raw, L.meta));
  const Meta xm = meta_at(at<int>(smem_raw, L.xm));
  const int bh = blockIdx.y, cta = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bool partials = pl.P > 0;
  const T* qh = head_of<T>(p.q, bh, p.H);
  const T* doh = head_of<T>(p.dout, bh, p.H);
  const T* oh = static_cast<const T*>(p.out) + static_cast<int64_t>(bh) * p.N * p.D;
  const T* xkh = static_cast<const T*>(p.extra) + static_cast<int64_t>(bh) * pl.E * p.D;
  const T* xvh = xkh + static_cast<int64_t>(pl.BH) * pl.E * p.D;
  const float scale_log2 = p.scale * kLog2e;

  int nq = 1, j0 = cta;
  if (pl.small) {
    j0 = cta * kBlocksPerCta;
    nq = min(kBlocksPerCta, pl.nblocks - j0);
  }
  if (partials && pl.xres) {
    fill_meta(xm, range_rows(0, pl.E), pl, kRows);
    __syncthreads();
    load_tile<T, DP>(sXk, xkh, p.D, xm.tok, pl.Epad, p.D);
    load_tile<T, DP>(sXv, xvh, p.D, xm.tok, pl.Epad, p.D);
    cp_async_commit();
  }
  float dkx[DP / 8][4], dvx[DP / 8][4];  // the CTA's partial sums (E <= 64), or one extra block's
  zero(dkx);
  zero(dvx);
  for (int j = 0; j < nq; ++j) {
    const int blk = j0 + j;
    RowBlock rows;
    if (pl.small) {
      const int t0 = blk * pl.SPB;
      rows = tile_rows(t0, min(pl.SPB, pl.T - t0), 0, pl.RB);
    } else {
      rows = tile_rows(blk / pl.QB, 1, (blk % pl.QB) * kRows, kRows);
    }
    __syncthreads();
    fill_meta(m, rows, pl, kRows);
    __syncthreads();
    load_tile<T, DP>(sO, oh, p.D, m.tok, kRows, p.D);
    load_tile<T, DP>(sdO, doh, p.dout.sn, m.tok, kRows, p.D);
    if (partials) load_tile<T, DP>(sQ, qh, p.q.sn, m.tok, kRows, p.D);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    delta_rows<T, DP>(sDelta, sO, sdO, m, p, pl, bh, true);
    row_stats(sLse2, sDelta, m, kRows, p, pl, bh, false);
    __syncthreads();
    if (!partials) continue;
    const unsigned qon = live_chunks(m, kRows);
    if (pl.xres) {
      extra_grads<T, DP>(dkx, dvx, sXk, sXv, pl.E, sQ, sdO, sLse2, sDelta, qon, scale_log2, warp, lane);
    } else {  // more than 64 extra keys: one block of them at a time, a slot per query block
      for (int e0 = 0; e0 < pl.E; e0 += kRows) {
        __syncthreads();
        fill_meta(xm, range_rows(e0, pl.E), pl, kRows);
        __syncthreads();
        load_tile<T, DP>(sXk, xkh, p.D, xm.tok, kRows, p.D);
        load_tile<T, DP>(sXv, xvh, p.D, xm.tok, kRows, p.D);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        const int n = min(kRows, pl.E - e0);
        zero(dkx);
        zero(dvx);
        extra_grads<T, DP>(dkx, dvx, sXk, sXv, n, sQ, sdO, sLse2, sDelta, qon, scale_log2, warp, lane);
        store_f32<DP>(part_slot(p, pl, 0, bh, blk, e0), dkx, 16 * warp, n, p.D, lane, false);
        store_f32<DP>(part_slot(p, pl, 1, bh, blk, e0), dvx, 16 * warp, n, p.D, lane, false);
      }
    }
  }
  if (partials && pl.xres) {
    store_f32<DP>(part_slot(p, pl, 0, bh, cta, 0), dkx, 16 * warp, pl.E, p.D, lane, false);
    store_f32<DP>(part_slot(p, pl, 1, bh, cta, 0), dvx, 16 * warp, pl.E, p.D, lane, false);
  }
}

// ============================================================================ backward: reduce
// Per extra key row e and head dim element: its partial slots added in slot order. Pooled keys
// (e < P, seen by grid queries only: the first npart_grid slots) to the workspace's XG (float32,
// dk already scaled); global tokens (all slots) into their dk, dv rows.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) wa_reduce_kernel(const Params p, const Plan pl) {
  const int bh = blockIdx.y;
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= pl.E * p.D) return;
  const int e = i / p.D, d = i - e * p.D;
  const int parts = e < pl.P ? pl.npart_grid : pl.npart;
  const float* pk = part_slot(p, pl, 0, bh, 0, 0) + i;
  const float* pv = part_slot(p, pl, 1, bh, 0, 0) + i;
  const int64_t stride = static_cast<int64_t>(pl.E) * p.D;
  float sk = 0.f, sv = 0.f;
  for (int j = 0; j < parts; ++j) {
    sk += pk[j * stride];
    sv += pv[j * stride];
  }
  sk *= p.scale;
  if (e < pl.P) {
    float* xg = p.work + pl.ws_xg;
    xg[(static_cast<int64_t>(bh) * pl.P + e) * p.D + d] = sk;
    xg[(static_cast<int64_t>(pl.BH + bh) * pl.P + e) * p.D + d] = sv;
  } else {
    head_of<T>(p.dk, bh, p.H)[(e - pl.P) * p.dk.sn + d] = T(sk);
    head_of<T>(p.dv, bh, p.H)[(e - pl.P) * p.dv.sn + d] = T(sv);
  }
}

// d rel_pos: thread (row r of [Rh; Rw], head dim d) adds the slots of every (batch, head) in order.
__global__ void __launch_bounds__(kThreads, 1) wa_rel_reduce_kernel(const Params p, const Plan pl) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= pl.RT * p.D) return;
  const int r = i / p.D, d = i - r * p.D;
  const float* src = p.work + pl.ws_rel + i;
  const int64_t stride = static_cast<int64_t>(pl.RT) * p.D;
  float acc = 0.f;
  for (int64_t s = 0; s < static_cast<int64_t>(pl.BH) * pl.rel_slots; ++s) acc += src[s * stride];
  if (r < pl.Rh)
    p.drel_h[r * p.D + d] = acc;
  else
    p.drel_w[(r - pl.Rh) * p.D + d] = acc;
}

// ============================================================================ backward: small tiles
template <typename T, int DP>
struct TileSmem {
  size_t q, k, v, dout, o, pst, dst, meta, gmeta, lse2, delta, glse2, gdelta, xm, xk, xv, acck, accv, xgk, xgv, rel,
      qr, dr, ds32, total;
  __host__ __device__ explicit TileSmem(const Plan& pl) {
    constexpr int LD = DP + kPad, LDP = kRows + kPad;
    Carve c;
    q = c.take<T>(kRows * LD);
    k = c.take<T>(kRows * LD);
    v = c.take<T>(kRows * LD);
    dout = c.take<T>(kRows * LD);
    o = c.take<T>(pl.prep ? 0 : kRows * LD);
    pst = c.take<T>(kRows * LDP);
    dst = c.take<T>(kRows * LDP);
    meta = c.take<int>(3 * kRows);
    gmeta = c.take<int>(3 * kRows);
    lse2 = c.take<float>(kRows);
    delta = c.take<float>(kRows);
    glse2 = c.take<float>(kRows);
    gdelta = c.take<float>(kRows);
    xm = c.take<int>(3 * kRows);
    xk = c.take<T>(pl.Epad * LD);
    xv = c.take<T>(pl.Epad * LD);
    const bool acc = pl.P == 0 && pl.E > 0 && pl.xres;  // the extra keys' partial sums, CTA-wide
    acck = c.take<float>(acc ? pl.Epad * DP : 0);
    accv = c.take<float>(acc ? pl.Epad * DP : 0);
    const bool xg = pl.P > 0 && pl.P <= kRows;  // the pooled keys' reduced gradients, CTA-wide
    xgk = c.take<float>(xg ? pl.P * DP : 0);
    xgv = c.take<float>(xg ? pl.P * DP : 0);
    rel = c.take<T>(pl.RTpad * LD);
    qr = c.take<float>(pl.RTpad * kRows);
    dr = c.take<float>(pl.RTpad * kRows);
    ds32 = c.take<float>(pl.RT ? kRows * (kRows + 1) : 0);
    total = c.off;
  }
};

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads, 1) wa_tile_kernel(const Params p, const Plan pl) {
  constexpr int LD = DP + kPad, LDP = kRows + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const TileSmem<T, DP> L(pl);
  T* sQ = at<T>(smem_raw, L.q);
  T* sK = at<T>(smem_raw, L.k);
  T* sV = at<T>(smem_raw, L.v);
  T* sdO = at<T>(smem_raw, L.dout);
  T* sO = at<T>(smem_raw, L.o);
  T* sP = at<T>(smem_raw, L.pst);
  T* sdS = at<T>(smem_raw, L.dst);
  T* sXk = at<T>(smem_raw, L.xk);
  T* sXv = at<T>(smem_raw, L.xv);
  T* sR = at<T>(smem_raw, L.rel);
  float* sLse2 = at<float>(smem_raw, L.lse2);
  float* sDelta = at<float>(smem_raw, L.delta);
  float* sGLse2 = at<float>(smem_raw, L.glse2);
  float* sGDelta = at<float>(smem_raw, L.gdelta);
  float* sAk = at<float>(smem_raw, L.acck);
  float* sAv = at<float>(smem_raw, L.accv);
  float* sXGk = at<float>(smem_raw, L.xgk);
  float* sXGv = at<float>(smem_raw, L.xgv);
  float* sQR = at<float>(smem_raw, L.qr);
  float* sDR = at<float>(smem_raw, L.dr);
  float* sdS32 = at<float>(smem_raw, L.ds32);
  const Meta m = meta_at(at<int>(smem_raw, L.meta));
  const Meta gm = meta_at(at<int>(smem_raw, L.gmeta));
  const Meta xm = meta_at(at<int>(smem_raw, L.xm));

  const int bh = blockIdx.y, cta = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int row0 = warp * 16;
  // Head pointers recomputed at each use: held for the whole kernel they spill at head dim 128.
  auto qh = [&] { return head_of<T>(p.q, bh, p.H); };
  auto kh = [&] { return head_of<T>(p.k, bh, p.H); };
  auto vh = [&] { return head_of<T>(p.v, bh, p.H); };
  auto doh = [&] { return head_of<T>(p.dout, bh, p.H); };
  auto oh = [&] { return static_cast<const T*>(p.out) + static_cast<int64_t>(bh) * p.N * p.D; };
  auto xkh = [&] { return static_cast<const T*>(p.extra) + static_cast<int64_t>(bh) * pl.E * p.D; };
  auto xvh = [&] { return xkh() + static_cast<int64_t>(pl.BH) * pl.E * p.D; };
  auto dqh = [&] { return head_of<T>(p.dq, bh, p.H); };
  auto dkh = [&] { return head_of<T>(p.dk, bh, p.H); };
  auto dvh = [&] { return head_of<T>(p.dv, bh, p.H); };
  const float scale_log2 = p.scale * kLog2e;
  const bool extra = pl.E > 0, pool = pl.P > 0, partials = !pool && extra, rel = pl.RT > 0;
  const int j0 = cta * kBlocksPerCta, nq = min(kBlocksPerCta, pl.nblocks - j0);

  // ---- once per CTA: the extra keys, the pooled keys' reduced gradients, the rel-pos tables
  if (extra && pl.xres) fill_meta(xm, range_rows(0, pl.E), pl, kRows);
  if (rel) load_rel<T, DP>(sR, p, pl);
  const bool xg_smem = pool && pl.P <= kRows;
  const float* xgk = p.work + pl.ws_xg + static_cast<int64_t>(bh) * pl.P * p.D;
  const float* xgv = p.work + pl.ws_xg + static_cast<int64_t>(pl.BH + bh) * pl.P * p.D;
  if (xg_smem) {  // stored with the head dim as stride (D), read by pooled_index rows
    for (int i = threadIdx.x; i < pl.P * p.D; i += kThreads) {
      sXGk[i] = xgk[i];
      sXGv[i] = xgv[i];
    }
    xgk = sXGk;
    xgv = sXGv;
  }
  if (partials && pl.xres)
    for (int i = threadIdx.x; i < pl.Epad * DP; i += kThreads) sAk[i] = sAv[i] = 0.f;
  __syncthreads();
  if (extra && pl.xres) {
    load_tile<T, DP>(sXk, xkh(), p.D, xm.tok, pl.Epad, p.D);
    load_tile<T, DP>(sXv, xvh(), p.D, xm.tok, pl.Epad, p.D);
    cp_async_commit();
  }

  for (int j = 0; j < nq; ++j) {
    const int blk = j0 + j, t0 = blk * pl.SPB;
    __syncthreads();  // the previous block is done with every buffer
    fill_meta(m, tile_rows(t0, min(pl.SPB, pl.T - t0), 0, pl.RB), pl, kRows);
    if (rel)
      for (int i = threadIdx.x; i < kRows * pl.RTpad; i += kThreads) sDR[i] = 0.f;
    __syncthreads();
    load_tile<T, DP>(sQ, qh(), p.q.sn, m.tok, kRows, p.D);
    load_tile<T, DP>(sK, kh(), p.k.sn, m.tok, kRows, p.D);
    load_tile<T, DP>(sV, vh(), p.v.sn, m.tok, kRows, p.D);
    load_tile<T, DP>(sdO, doh(), p.dout.sn, m.tok, kRows, p.D);
    if (!pl.prep) load_tile<T, DP>(sO, oh(), p.D, m.tok, kRows, p.D);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (!pl.prep) delta_rows<T, DP>(sDelta, sO, sdO, m, p, pl, bh, false);
    row_stats(sLse2, sDelta, m, kRows, p, pl, bh, pl.prep);
    __syncthreads();

    // ---- phase A: warps own query rows. S, dP; P and dS staged; dq = dS k (+ extra keys)
    const bool warp_on = m.tok[row0] >= 0;
    const unsigned on = warp_on ? same_tile_chunks(m, kRows, row0) : 0u;
    int tok[2], grp[2], lyx[2];
    float lse2[2], dlt[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + g + 8 * r;
      tok[r] = m.tok[row];
      grp[r] = m.grp[row];
      lyx[r] = m.lyx[row];
      lse2[r] = sLse2[row];
      dlt[r] = sDelta[row];
    }
    float dq[DP / 8][4];
    zero(dq);
    if (warp_on) {
      if (rel) {
        uint32_t qf[DP / 16][4];
        load_a<T, DP>(qf, sQ, row0, lane);
        rel_table<T, DP>(sQR, sR, qf, pl, row0, lane);
        __syncwarp();
      }
      // 32 keys at a time for wide heads: two score tiles beside dq stay within the registers
      constexpr int NA = DP <= 64 ? 64 : 32;
#pragma unroll
      for (int h = 0; h < kRows / NA; ++h) {
        const unsigned part = (on >> (h * NA / 16)) & ((1u << (NA / 16)) - 1u);
        if (!part) continue;  // never read by phase B: other tiles' keys
        float s[NA / 8][4], dp[NA / 8][4];
        q_step<T, DP, NA>(s, dp, sQ, sdO, row0, sK + h * NA * LD, sV + h * NA * LD, lse2, dlt, part, scale_log2,
                          lane, [&](int c, int r, float x) {
                            const int col = h * NA + c;
                            if (m.tok[col] < 0 || m.grp[col] != grp[r]) return -INFINITY;
                            return rel ? x + kLog2e * rel_bias(sQR + (row0 + g + 8 * r) * pl.RTpad, pl, lyx[r],
                                                               m.lyx[col])
                                       : x;
                          });
        for_each_acc<NA / 8>(tq, [&](int jj, int e, int c, int r) {
          if (e & 1) return;
          const int row = row0 + g + 8 * r, col = h * NA + c;
          *reinterpret_cast<uint32_t*>(sP + row * LDP + col) = Mma<T>::pack(s[jj][e], s[jj][e + 1]);
          *reinterpret_cast<uint32_t*>(sdS + row * LDP + col) = Mma<T>::pack(dp[jj][e], dp[jj][e + 1]);
          if (rel) {
            sdS32[row * (kRows + 1) + col] = dp[jj][e];
            sdS32[row * (kRows + 1) + col + 1] = dp[jj][e + 1];
          }
        });
        mma_acc_pb<T, DP, NA>(dq, dp, sK + h * NA * LD, lane, part);
      }
      if (extra && pl.xres) dq_extra<T, DP>(dq, sQ, sdO, row0, sXk, sXv, pl.E, lse2, dlt, scale_log2, lane);
    }
    auto load_extra = [&](int e0) {  // more than 64 extra keys: a block of them at a time (uniform)
      __syncthreads();
      fill_meta(xm, range_rows(e0, pl.E), pl, kRows);
      __syncthreads();
      load_tile<T, DP>(sXk, xkh(), p.D, xm.tok, kRows, p.D);
      load_tile<T, DP>(sXv, xvh(), p.D, xm.tok, kRows, p.D);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    };
    if (extra && !pl.xres) {
      for (int e0 = 0; e0 < pl.E; e0 += kRows) {
        load_extra(e0);
        if (warp_on) dq_extra<T, DP>(dq, sQ, sdO, row0, sXk, sXv, min(kRows, pl.E - e0), lse2, dlt, scale_log2, lane);
      }
    }
    if (rel) {
      __syncthreads();
      rel_accumulate(sDR, sdS32, kRows + 1, kRows, m, m, pl);
      __syncthreads();
      rel_partial<T, DP>(p, pl, sDR, sQ, bh, blk);
    }
    if (warp_on) {
#pragma unroll
      for (int jj = 0; jj < DP / 8; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) dq[jj][e] *= p.scale;
      if (rel) rel_dq<T, DP>(dq, sDR, sR, pl, row0, lane);
      store_acc<T, DP>(dqh(), p.dq.sn, dq, tok, p.D, 1.f, tq);
    }

    // ---- the extra keys' partial gradients (no pooling: the global tokens seen by these rows), dq
    // stored first (register budget)
    if (partials) {
      for (int e0 = 0; e0 < pl.E; e0 += kRows) {
        if (!pl.xres) load_extra(e0);
        const int n = min(pl.E - e0, pl.xres ? pl.Epad : kRows);
        extra_grads_to<T, DP>(sXk, sXv, n, sQ, sdO, sLse2, sDelta, live_chunks(m, kRows), scale_log2, warp, lane,
                              [&](int c, const float(&acc)[DP / 8][4]) {
                                if (pl.xres)  // the warp's own rows of the CTA's accumulator: a fixed order
                                  store_f32<DP>(c ? sAv : sAk, acc, 16 * warp, pl.E, DP, lane, true);
                                else  // this block's slot
                                  store_f32<DP>(part_slot(p, pl, c, bh, blk, e0), acc, 16 * warp, n, p.D, lane, false);
                              });
      }
    }
    __syncthreads();  // P, dS staged by every warp

    // ---- phase B: warps own key rows. dv = P^T dO, dk = dS^T q
    float dk[DP / 8][4], dv[DP / 8][4];
    zero(dk);
    zero(dv);
    if (warp_on) mma_acc_tb_pair<T, DP>(dv, sP, sdO, dk, sdS, sQ, LDP, row0, lane, on);
    // the global queries' share (they see every key)
    for (int g0 = 0; g0 < pl.G; g0 += kRows) {
      __syncthreads();
      fill_meta(gm, range_rows(g0, pl.G), pl, kRows);
      __syncthreads();
      load_tile<T, DP>(sQ, qh(), p.q.sn, gm.tok, kRows, p.D);
      load_tile<T, DP>(sdO, doh(), p.dout.sn, gm.tok, kRows, p.D);
      cp_async_commit();
      row_stats(sGLse2, sGDelta, gm, kRows, p, pl, bh, true);
      cp_async_wait<0>();
      __syncthreads();
      if (warp_on)
        kv_block<T, DP>(dk, dv, sK, sV, row0, sQ, sdO, sGLse2, sGDelta, live_chunks(gm, kRows), scale_log2, lane,
                        [&](int col, int, float x) { return gm.tok[col] >= 0 ? x : -INFINITY; });
    }
    if (warp_on) {
#pragma unroll
      for (int jj = 0; jj < DP / 8; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[jj][e] *= p.scale;
      if (pool) pool_spread<DP>(dk, dv, tok, xgk, xgv, pl, lane);
      store_acc<T, DP>(dkh(), p.dk.sn, dk, tok, p.D, 1.f, tq);
      store_acc<T, DP>(dvh(), p.dv.sn, dv, tok, p.D, 1.f, tq);
    }
  }
  if (partials && pl.xres) {
    __syncthreads();
    for (int i = threadIdx.x; i < pl.E * p.D; i += kThreads) {
      const int e = i / p.D, d = i - e * p.D;
      part_slot(p, pl, 0, bh, cta, 0)[i] = sAk[e * DP + d];
      part_slot(p, pl, 1, bh, cta, 0)[i] = sAv[e * DP + d];
    }
  }
}

// ============================================================================ backward: large tiles, global rows
template <int DP>
struct LargeCfg {
  static constexpr int BN = DP <= 64 ? 64 : 32;  // key rows a step of the dq kernel, query rows of the dk/dv kernel
};

template <typename T, int DP>
struct DqSmem {
  size_t q, dout, o, k, v, qm, km, lse2, delta, xm, xk, xv, rel, qr, dr, ds32, total;
  __host__ __device__ DqSmem(const Plan& pl, bool global) {
    constexpr int LD = DP + kPad, BN = LargeCfg<DP>::BN;
    Carve c;
    q = c.take<T>(kRows * LD);
    dout = c.take<T>(kRows * LD);
    o = c.take<T>(global ? kRows * LD : 0);
    k = c.take<T>(2 * BN * LD);
    v = c.take<T>(2 * BN * LD);
    qm = c.take<int>(3 * kRows);
    km = c.take<int>(2 * 3 * kRows);
    lse2 = c.take<float>(kRows);
    delta = c.take<float>(kRows);
    xm = c.take<int>(3 * kRows);
    const int xrows = global ? round16(pl.G < kRows ? pl.G : kRows) : pl.Epad;
    xk = c.take<T>(xrows * LD);
    xv = c.take<T>(xrows * LD);
    const int rt = global ? 0 : pl.RTpad;
    rel = c.take<T>(rt * LD);
    qr = c.take<float>(rt * kRows);
    dr = c.take<float>(rt * kRows);
    ds32 = c.take<float>(rt ? kRows * (BN + 1) : 0);
    total = c.off;
  }
};

// dq of one query block. kGlobal: global rows blockIdx.x * 64.. over all N keys (delta computed
// here and stored for the later kernels), then the global keys' partial gradients from these
// queries. Else large tiles: query block qb of tile t over the tile's key blocks, then the extra
// keys (and, without pooling, their partial gradients from this block); relative position.
template <typename T, int DP, bool kGlobal>
__global__ void __launch_bounds__(kThreads, 1) wa_dq_kernel(const Params p, const Plan pl) {
  constexpr int LD = DP + kPad, BN = LargeCfg<DP>::BN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const DqSmem<T, DP> L(pl, kGlobal);
  T* sQ = at<T>(smem_raw, L.q);
  T* sdO = at<T>(smem_raw, L.dout);
  T* sO = at<T>(smem_raw, L.o);
  T* sK = at<T>(smem_raw, L.k);
  T* sV = at<T>(smem_raw, L.v);
  T* sXk = at<T>(smem_raw, L.xk);
  T* sXv = at<T>(smem_raw, L.xv);
  T* sR = at<T>(smem_raw, L.rel);
  float* sLse2 = at<float>(smem_raw, L.lse2);
  float* sDelta = at<float>(smem_raw, L.delta);
  float* sQR = at<float>(smem_raw, L.qr);
  float* sDR = at<float>(smem_raw, L.dr);
  float* sdS32 = at<float>(smem_raw, L.ds32);
  const Meta qm = meta_at(at<int>(smem_raw, L.qm));
  int* const kmeta_base = at<int>(smem_raw, L.km);
  auto kmeta = [&](int i) { return meta_at(kmeta_base + (i & 1) * 3 * kRows); };
  const Meta xm = meta_at(at<int>(smem_raw, L.xm));

  const int bh = blockIdx.y, cta = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int row0 = warp * 16;
  // Head pointers recomputed at each use: held for the whole kernel they spill at head dim 128.
  auto qh = [&] { return head_of<T>(p.q, bh, p.H); };
  auto kh = [&] { return head_of<T>(p.k, bh, p.H); };
  auto vh = [&] { return head_of<T>(p.v, bh, p.H); };
  auto doh = [&] { return head_of<T>(p.dout, bh, p.H); };
  auto oh = [&] { return static_cast<const T*>(p.out) + static_cast<int64_t>(bh) * p.N * p.D; };
  auto xkh = [&] { return static_cast<const T*>(p.extra) + static_cast<int64_t>(bh) * pl.E * p.D; };
  auto xvh = [&] { return xkh() + static_cast<int64_t>(pl.BH) * pl.E * p.D; };
  const float scale_log2 = p.scale * kLog2e;
  const bool extra = !kGlobal && pl.E > 0, partials = extra && pl.P == 0, rel = !kGlobal && pl.RT > 0;

  int t = 0, qb = 0, nk;
  RowBlock qrows;
  if (kGlobal) {
    qrows = range_rows(cta * kRows, pl.G);
    nk = cdiv(p.N, BN);
  } else {
    t = cta / pl.QB;
    qb = cta - t * pl.QB;
    const int count = tile_count(pl, t);
    if (qb * kRows >= count) {  // an empty block of a partial tile: its slots hold zeros
      if (partials)
        for (int i = threadIdx.x; i < pl.E * p.D; i += kThreads)
          part_slot(p, pl, 0, bh, cta, 0)[i] = part_slot(p, pl, 1, bh, cta, 0)[i] = 0.f;
      if (rel)
        for (int i = threadIdx.x; i < pl.RT * p.D; i += kThreads)
          p.work[pl.ws_rel + (static_cast<int64_t>(bh) * pl.rel_slots + cta) * pl.RT * p.D + i] = 0.f;
      return;
    }
    qrows = tile_rows(t, 1, qb * kRows, kRows);
    nk = cdiv(count, BN);
  }
  auto krows = [&](int kb) { return kGlobal ? range_rows(kb * BN, p.N) : tile_rows(t, 1, kb * BN, BN); };
  auto issue = [&](int kb) {
    load_tile<T, DP>(sK + (kb & 1) * BN * LD, kh(), p.k.sn, kmeta(kb).tok, BN, p.D);
    load_tile<T, DP>(sV + (kb & 1) * BN * LD, vh(), p.v.sn, kmeta(kb).tok, BN, p.D);
  };

  fill_meta(qm, qrows, pl, kRows);
  fill_meta(kmeta(0), krows(0), pl, BN);
  if (extra && pl.xres) fill_meta(xm, range_rows(0, pl.E), pl, kRows);
  if (rel) {
    load_rel<T, DP>(sR, p, pl);
    for (int i = threadIdx.x; i < kRows * pl.RTpad; i += kThreads) sDR[i] = 0.f;
  }
  __syncthreads();
  load_tile<T, DP>(sQ, qh(), p.q.sn, qm.tok, kRows, p.D);
  load_tile<T, DP>(sdO, doh(), p.dout.sn, qm.tok, kRows, p.D);
  if (kGlobal) load_tile<T, DP>(sO, oh(), p.D, qm.tok, kRows, p.D);
  if (extra && pl.xres) {
    load_tile<T, DP>(sXk, xkh(), p.D, xm.tok, pl.Epad, p.D);
    load_tile<T, DP>(sXv, xvh(), p.D, xm.tok, pl.Epad, p.D);
  }
  issue(0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  if (kGlobal) delta_rows<T, DP>(sDelta, sO, sdO, qm, p, pl, bh, true);
  row_stats(sLse2, sDelta, qm, kRows, p, pl, bh, !kGlobal);
  __syncthreads();

  const bool warp_on = qm.tok[row0] >= 0;
  int tok[2], grp[2], lyx[2];
  float lse2[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + g + 8 * r;
    tok[r] = qm.tok[row];
    grp[r] = qm.grp[row];
    lyx[r] = qm.lyx[row];
    lse2[r] = sLse2[row];
    dlt[r] = sDelta[row];
  }
  if (rel && warp_on) {
    uint32_t qf[DP / 16][4];
    load_a<T, DP>(qf, sQ, row0, lane);
    rel_table<T, DP>(sQR, sR, qf, pl, row0, lane);
    __syncwarp();
  }
  float dq[DP / 8][4];
  zero(dq);
  for (int kb = 0; kb < nk; ++kb) {
    cp_async_wait<0>();
    __syncthreads();  // key block kb visible; every warp is done with kb - 1
    if (kb + 1 < nk) fill_meta(kmeta(kb + 1), krows(kb + 1), pl, BN);
    __syncthreads();
    if (kb + 1 < nk) {
      issue(kb + 1);
      cp_async_commit();
    }
    const Meta km = kmeta(kb);
    if (warp_on) {
      float s[BN / 8][4], dp[BN / 8][4];
      q_step<T, DP, BN>(s, dp, sQ, sdO, row0, sK + (kb & 1) * BN * LD, sV + (kb & 1) * BN * LD, lse2, dlt,
                        live_chunks(km, BN), scale_log2, lane, [&](int col, int r, float x) {
                          if (km.tok[col] < 0 || (!kGlobal && km.grp[col] != grp[r])) return -INFINITY;
                          return rel ? x + kLog2e * rel_bias(sQR + (row0 + g + 8 * r) * pl.RTpad, pl, lyx[r],
                                                             km.lyx[col])
                                     : x;
                        });
      mma_acc_pb<T, DP, BN>(dq, dp, sK + (kb & 1) * BN * LD, lane, live_chunks(km, BN));
      if (rel)
        for_each_acc<BN / 8>(tq, [&](int jj, int e, int col, int r) {
          sdS32[(row0 + g + 8 * r) * (BN + 1) + col] = dp[jj][e];
        });
    }
    if (rel) {
      __syncthreads();
      rel_accumulate(sDR, sdS32, BN + 1, BN, qm, km, pl);
    }
  }

  // ---- the extra keys' share of dq (grid rows); dq stored; then the extra keys' partial gradients
  // (grid rows without pooling), or the global keys' ones from the global rows
  const int x0 = kGlobal ? pl.P : 0, xn = kGlobal ? pl.G : pl.E;
  auto load_extra = [&](int e0) {  // not resident: one block of extra rows at a time (uniform)
    const int n = min(kRows, xn - e0);
    __syncthreads();
    fill_meta(xm, range_rows(x0 + e0, x0 + xn), pl, kRows);
    __syncthreads();
    load_tile<T, DP>(sXk, xkh(), p.D, xm.tok, round16(n), p.D);
    load_tile<T, DP>(sXv, xvh(), p.D, xm.tok, round16(n), p.D);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  };
  if (extra) {
    for (int e0 = 0; e0 < xn; e0 += kRows) {
      if (!pl.xres) load_extra(e0);
      if (warp_on) dq_extra<T, DP>(dq, sQ, sdO, row0, sXk, sXv, min(kRows, xn - e0), lse2, dlt, scale_log2, lane);
    }
  }
  if (rel) {
    __syncthreads();
    rel_partial<T, DP>(p, pl, sDR, sQ, bh, cta);
  }
  if (warp_on) {
#pragma unroll
    for (int jj = 0; jj < DP / 8; ++jj)
#pragma unroll
      for (int e = 0; e < 4; ++e) dq[jj][e] *= p.scale;
    if (rel) rel_dq<T, DP>(dq, sDR, sR, pl, row0, lane);
    store_acc<T, DP>(head_of<T>(p.dq, bh, p.H), p.dq.sn, dq, tok, p.D, 1.f, tq);
  }
  if (kGlobal || partials) {
    const unsigned qon = live_chunks(qm, kRows);
    const int slot = kGlobal ? pl.npart_grid + cta : cta;
    for (int e0 = 0; e0 < xn; e0 += kRows) {
      if (kGlobal || !pl.xres) load_extra(e0);
      const int n = min(kRows, xn - e0);
      extra_grads_to<T, DP>(sXk, sXv, n, sQ, sdO, sLse2, sDelta, qon, scale_log2, warp, lane,
                            [&](int c, const float(&acc)[DP / 8][4]) {
                              float* dst = part_slot(p, pl, c, bh, slot, x0 + e0);
                              store_f32<DP>(dst, acc, 16 * warp, n, p.D, lane, false);
                            });
    }
  }
}

template <typename T, int DP>
struct DkvSmem {
  size_t k, v, q, dout, km, qm, lse2, delta, xgk, xgv, rel, qr, total;
  __host__ __device__ explicit DkvSmem(const Plan& pl) {
    constexpr int LD = DP + kPad, BQ = LargeCfg<DP>::BN;
    Carve c;
    k = c.take<T>(kRows * LD);
    v = c.take<T>(kRows * LD);
    q = c.take<T>(2 * BQ * LD);
    dout = c.take<T>(2 * BQ * LD);
    km = c.take<int>(3 * kRows);
    qm = c.take<int>(2 * 3 * kRows);
    lse2 = c.take<float>(2 * kRows);
    delta = c.take<float>(2 * kRows);
    const bool xg = pl.P > 0 && pl.P <= kRows;
    xgk = c.take<float>(xg ? pl.P * DP : 0);
    xgv = c.take<float>(xg ? pl.P * DP : 0);
    rel = c.take<T>(pl.RTpad * LD);
    qr = c.take<float>(pl.RTpad * BQ);
    total = c.off;
  }
};

// dk, dv of key block kb of large tile t (blockIdx.x = t * QB + kb): over the tile's query blocks
// (BQ rows, double-buffered) and then the global rows; the pooled keys' spread; one writer a row.
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads, 1) wa_dkv_kernel(const Params p, const Plan pl) {
  constexpr int LD = DP + kPad, BQ = LargeCfg<DP>::BN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const DkvSmem<T, DP> L(pl);
  T* sK = at<T>(smem_raw, L.k);
  T* sV = at<T>(smem_raw, L.v);
  T* sQ = at<T>(smem_raw, L.q);
  T* sdO = at<T>(smem_raw, L.dout);
  T* sR = at<T>(smem_raw, L.rel);
  float* sLse2 = at<float>(smem_raw, L.lse2);
  float* sDelta = at<float>(smem_raw, L.delta);
  float* sXGk = at<float>(smem_raw, L.xgk);
  float* sXGv = at<float>(smem_raw, L.xgv);
  float* sQR = at<float>(smem_raw, L.qr);
  const Meta km = meta_at(at<int>(smem_raw, L.km));
  int* const qmeta_base = at<int>(smem_raw, L.qm);
  auto qmeta = [&](int i) { return meta_at(qmeta_base + (i & 1) * 3 * kRows); };

  const int bh = blockIdx.y, cta = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int row0 = warp * 16;
  const int t = cta / pl.QB, kb = cta - t * pl.QB;
  const int count = tile_count(pl, t);
  if (kb * kRows >= count) return;
  const T* qh = head_of<T>(p.q, bh, p.H);
  const T* kh = head_of<T>(p.k, bh, p.H);
  const T* vh = head_of<T>(p.v, bh, p.H);
  const T* doh = head_of<T>(p.dout, bh, p.H);
  const float scale_log2 = p.scale * kLog2e;
  const bool rel = pl.RT > 0, pool = pl.P > 0;
  const int nqt = cdiv(count, BQ), nsteps = nqt + cdiv(pl.G, BQ);
  auto qrows = [&](int s) { return s < nqt ? tile_rows(t, 1, s * BQ, BQ) : range_rows((s - nqt) * BQ, pl.G); };
  auto fill = [&](int s) {
    const int b = s & 1;
    fill_meta(qmeta(s), qrows(s), pl, BQ);
    row_stats(sLse2 + b * kRows, sDelta + b * kRows, qmeta(s), BQ, p, pl, bh, true);  // same thread: no barrier
  };
  auto issue = [&](int s) {
    load_tile<T, DP>(sQ + (s & 1) * BQ * LD, qh, p.q.sn, qmeta(s).tok, BQ, p.D);
    load_tile<T, DP>(sdO + (s & 1) * BQ * LD, doh, p.dout.sn, qmeta(s).tok, BQ, p.D);
  };

  fill_meta(km, tile_rows(t, 1, kb * kRows, kRows), pl, kRows);
  fill(0);
  if (rel) load_rel<T, DP>(sR, p, pl);
  const float* xgk = p.work + pl.ws_xg + static_cast<int64_t>(bh) * pl.P * p.D;
  const float* xgv = p.work + pl.ws_xg + static_cast<int64_t>(pl.BH + bh) * pl.P * p.D;
  if (pool && pl.P <= kRows) {
    for (int i = threadIdx.x; i < pl.P * p.D; i += kThreads) {
      sXGk[i] = xgk[i];
      sXGv[i] = xgv[i];
    }
    xgk = sXGk;
    xgv = sXGv;
  }
  __syncthreads();
  load_tile<T, DP>(sK, kh, p.k.sn, km.tok, kRows, p.D);
  load_tile<T, DP>(sV, vh, p.v.sn, km.tok, kRows, p.D);
  issue(0);
  cp_async_commit();

  const bool warp_on = km.tok[row0] >= 0;
  int tok[2], grp[2], lyx[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    tok[r] = km.tok[row0 + g + 8 * r];
    grp[r] = km.grp[row0 + g + 8 * r];
    lyx[r] = km.lyx[row0 + g + 8 * r];
  }
  float dk[DP / 8][4], dv[DP / 8][4];
  zero(dk);
  zero(dv);
  for (int s = 0; s < nsteps; ++s) {
    cp_async_wait<0>();
    __syncthreads();
    if (s + 1 < nsteps) fill(s + 1);
    __syncthreads();
    if (s + 1 < nsteps) {
      issue(s + 1);
      cp_async_commit();
    }
    const int b = s & 1;
    const Meta qm = qmeta(s);
    const bool cell = s < nqt;
    const T* tQ = sQ + b * BQ * LD;
    if (rel && cell) {  // q . [Rh; Rw]^T of this query block, for the pairs' biases
      if (row0 < BQ && qm.tok[row0] >= 0) {
        uint32_t qf[DP / 16][4];
        load_a<T, DP>(qf, tQ, row0, lane);
        rel_table<T, DP>(sQR, sR, qf, pl, row0, lane);
      }
      __syncthreads();
    }
    if (warp_on)
      kv_step<T, DP, BQ>(dk, dv, sK, sV, row0, tQ, sdO + b * BQ * LD, sLse2 + b * kRows, sDelta + b * kRows,
                         live_chunks(qm, BQ), scale_log2, lane, [&](int col, int r, float x) {
                           if (qm.tok[col] < 0 || (cell && qm.grp[col] != grp[r])) return -INFINITY;
                           return rel && cell ? x + kLog2e * rel_bias(sQR + col * pl.RTpad, pl, qm.lyx[col], lyx[r])
                                              : x;
                         });
    if (rel && cell) __syncthreads();  // sQR is rewritten by the next query block
  }
  if (warp_on) {
#pragma unroll
    for (int jj = 0; jj < DP / 8; ++jj)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[jj][e] *= p.scale;
    if (pool) pool_spread<DP>(dk, dv, tok, xgk, xgv, pl, lane);
    store_acc<T, DP>(head_of<T>(p.dk, bh, p.H), p.dk.sn, dk, tok, p.D, 1.f, tq);
    store_acc<T, DP>(head_of<T>(p.dv, bh, p.H), p.dv.sn, dv, tok, p.D, 1.f, tq);
  }
}

// ============================================================================ head-resident path
// With pooling every output needs the means of *all* k, v of its head, and every dk, dv the sum of
// the pooled keys' gradients over *all* its queries: streamed, that is one more pass over k, v
// (forward) and over q, dO, O (backward). When a head fits in shared memory (head dim <= 64, N <=
// ~768 with bf16/fp16: ViTPose-B at 1/8 features), one CTA per (batch, head) keeps it there:
//   forward:  k, v resident; the pooled means from smem; the tiles' queries streamed (q read once).
//   backward: phase 1 streams q, dO, O once (delta; the pooled keys' gradients summed in registers
//             in a fixed order, no partial slots), keeping q and dO resident; phase 2 streams k, v
//             once and runs the single pass per block from the resident q, dO.
// So q, k, v, dO, O are each read once, as the bandwidth floor assumes. Same algorithm, masks and
// products as the streamed kernels; rows of the resident arrays are gathered by token
// (Gathered operands). Without global tokens and relative position (they would not fit).
template <typename T>
struct ResFwdSmem {
  size_t kall, vall, zero, q, qm, xm, xk, xv, total;
  __host__ __device__ explicit ResFwdSmem(const Plan& pl) {
    constexpr int LD = kResidentDim + kPad;
    Carve c;
    kall = c.take<T>(static_cast<size_t>(pl.N) * kResidentDim);
    vall = c.take<T>(static_cast<size_t>(pl.N) * kResidentDim);
    zero = c.take<T>(kResidentDim);
    q = c.take<T>(2 * kRows * LD);
    qm = c.take<int>(2 * 3 * kRows);
    xm = c.take<int>(3 * kRows);
    xk = c.take<T>(pl.Epad * LD);
    xv = c.take<T>(pl.Epad * LD);
    total = c.off;
  }
};

template <typename T>
struct ResBwdSmem {
  size_t qall, doall, zero, k, v, meta, lse2, delta, xm, xk, xv, xgk, xgv, total;
  __host__ __device__ explicit ResBwdSmem(const Plan& pl) {
    constexpr int LD = kResidentDim + kPad;
    Carve c;
    qall = c.take<T>(static_cast<size_t>(pl.N) * kResidentDim);
    doall = c.take<T>(static_cast<size_t>(pl.N) * kResidentDim);
    zero = c.take<T>(kResidentDim);
    k = c.take<T>(kRows * LD);  // phase 1: O of the block; phase 2: k, then P
    v = c.take<T>(kRows * LD);  // phase 2: v, then dS
    meta = c.take<int>(3 * kRows);
    lse2 = c.take<float>(kRows);
    delta = c.take<float>(kRows);
    xm = c.take<int>(3 * kRows);
    xk = c.take<T>(pl.Epad * LD);
    xv = c.take<T>(pl.Epad * LD);
    xgk = c.take<float>(static_cast<size_t>(pl.P) * pl.D);
    xgv = c.take<float>(static_cast<size_t>(pl.P) * pl.D);
    total = c.off;
  }
};

// Rows tok[0..rows) of a strided head into their token rows of a resident [N][64] array.
template <typename T>
__device__ __forceinline__ void load_resident(T* all, const T* base, int64_t sn, const int* tok, int rows, int D) {
  for (int c = threadIdx.x; c < rows * 8; c += kThreads) {
    const int r = c >> 3, ch = c & 7, t = tok[r];
    if (t < 0) continue;
    const bool ok = ch * 8 < D;
    cp_async16(all + swizzled(t, ch * 8), ok ? base + t * sn + ch * 8 : base, ok);
  }
}

template <typename T>
__device__ __forceinline__ RowBlock block_rows(const Plan& pl, int blk) {
  const int t0 = blk * pl.SPB;
  return tile_rows(t0, min(pl.SPB, pl.T - t0), 0, pl.RB);
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) wa_fwd_resident_kernel(const Params p, const Plan pl) {
  constexpr int DP = kResidentDim, LD = DP + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const ResFwdSmem<T> L(pl);
  T* sKall = at<T>(smem_raw, L.kall);
  T* sVall = at<T>(smem_raw, L.vall);
  T* sZero = at<T>(smem_raw, L.zero);
  T* sQ = at<T>(smem_raw, L.q);
  T* sXk = at<T>(smem_raw, L.xk);
  T* sXv = at<T>(smem_raw, L.xv);
  int* const qmeta_base = at<int>(smem_raw, L.qm);
  auto qmeta = [&](int i) { return meta_at(qmeta_base + (i & 1) * 3 * kRows); };

  const int bh = blockIdx.y;
  const T* qh = head_of<T>(p.q, bh, p.H);
  const T* kh = head_of<T>(p.k, bh, p.H);
  const T* vh = head_of<T>(p.v, bh, p.H);
  T* xk_out = static_cast<T*>(p.extra) + static_cast<int64_t>(bh) * pl.E * p.D;
  T* xv_out = xk_out + static_cast<int64_t>(pl.BH) * pl.E * p.D;

  // ---- the head's k and v into shared memory, once (G == 0: every token is a grid token)
  for (int i = threadIdx.x; i < p.N * 8; i += kThreads) {
    const int t = i >> 3, ch = i & 7;
    const bool ok = ch * 8 < p.D;
    cp_async16(sKall + swizzled(t, ch * 8), ok ? kh + t * p.k.sn + ch * 8 : kh, ok);
    cp_async16(sVall + swizzled(t, ch * 8), ok ? vh + t * p.v.sn + ch * 8 : vh, ok);
  }
  if (threadIdx.x < DP) sZero[threadIdx.x] = T(0.f);
  fill_meta(qmeta(0), block_rows<T>(pl, 0), pl, kRows);
  __syncthreads();
  load_tile<T, DP>(sQ, qh, p.q.sn, qmeta(0).tok, kRows, p.D);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // ---- the pooled means from shared memory: extra_kv (saved by the op) and the CTA's extra keys
  for (int job = threadIdx.x; job < 2 * pl.Epad * 8; job += kThreads) {
    const int tensor = job / (pl.Epad * 8), rest = job - tensor * pl.Epad * 8;
    const int e = rest >> 3, ch = rest & 7;
    uint4 packed = make_uint4(0u, 0u, 0u, 0u);
    if (e < pl.P && ch * 8 < p.D) {
      const int ty = e / pl.ntw, tx = e - ty * pl.ntw;
      const int y0 = ty * pl.wh, x0 = tx * pl.ww;
      const int rows = min(pl.wh, pl.Hg - y0), cols = min(pl.ww, pl.Wg - x0);
      const T* all = tensor ? sVall : sKall;
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
          const T* src = all + swizzled((y0 + r) * pl.Wg + x0 + c, ch * 8);
#pragma unroll
          for (int u = 0; u < 8; ++u) acc[u] += Mma<T>::to_float(src[u]);
        }
      const float cnt = static_cast<float>(rows * cols);
      uint32_t* o32 = reinterpret_cast<uint32_t*>(&packed);
#pragma unroll
      for (int u = 0; u < 4; ++u) o32[u] = Mma<T>::pack(acc[2 * u] / cnt, acc[2 * u + 1] / cnt);
      *reinterpret_cast<uint4*>((tensor ? xv_out : xk_out) + static_cast<int64_t>(e) * p.D + ch * 8) = packed;
    }
    *reinterpret_cast<uint4*>((tensor ? sXv : sXk) + e * LD + ch * 8) = packed;
  }

  // ---- the blocks, the next block's q copied while the current one computes
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int row0 = warp * 16;
  const float scale_log2 = p.scale * kLog2e;
  const int64_t base = static_cast<int64_t>(bh) * p.N;
  for (int s = 0; s < pl.nblocks; ++s) {
    cp_async_wait<0>();
    __syncthreads();
    if (s + 1 < pl.nblocks) fill_meta(qmeta(s + 1), block_rows<T>(pl, s + 1), pl, kRows);
    __syncthreads();
    if (s + 1 < pl.nblocks) {
      load_tile<T, DP>(sQ + ((s + 1) & 1) * kRows * LD, qh, p.q.sn, qmeta(s + 1).tok, kRows, p.D);
      cp_async_commit();
    }
    const Meta qm = qmeta(s);
    if (qm.tok[row0] < 0) continue;
    int qtok[2], qgrp[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      qtok[r] = qm.tok[row0 + g + 8 * r];
      qgrp[r] = qm.grp[row0 + g + 8 * r];
    }
    uint32_t qf[DP / 16][4];
    load_a<T, DP>(qf, sQ + (s & 1) * kRows * LD, row0, lane);
    float o[DP / 8][4];
    zero(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const Gathered<T> kop{sKall, qm.tok, sZero}, vop{sVall, qm.tok, sZero};
    const unsigned on = same_tile_chunks(qm, kRows, row0);
    float sc[8][4];
    mma_abt<T, DP, 64>(sc, qf, kop, lane, on);
    for_each_acc<8>(tq, [&](int jj, int e, int col, int r) {
      const bool ok = ((on >> (col >> 4)) & 1u) && qm.tok[col] >= 0 && qm.grp[col] == qgrp[r];
      sc[jj][e] = ok ? sc[jj][e] * scale_log2 : -INFINITY;
    });
    online_softmax<DP, 64>(sc, o, m, l);
    mma_acc_pb<T, DP, 64>(o, sc, vop, lane, on);
    unsigned xon = 0;
    for (int nn = 0; nn < 4; ++nn) xon |= (nn * 16 < pl.E ? 1u : 0u) << nn;
    mma_abt<T, DP, 64>(sc, qf, sXk, lane, xon);
    for_each_acc<8>(tq, [&](int jj, int e, int col, int) {
      sc[jj][e] = col < pl.E ? sc[jj][e] * scale_log2 : -INFINITY;
    });
    online_softmax<DP, 64>(sc, o, m, l);
    mma_acc_pb<T, DP, 64>(o, sc, sXv, lane, xon);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    const float inv[2] = {l[0] > 0.f ? 1.f / l[0] : 0.f, l[1] > 0.f ? 1.f / l[1] : 0.f};
#pragma unroll
    for (int jj = 0; jj < DP / 8; ++jj) {
      o[jj][0] *= inv[0];
      o[jj][1] *= inv[0];
      o[jj][2] *= inv[1];
      o[jj][3] *= inv[1];
    }
    store_acc<T, DP>(static_cast<T*>(p.out) + base * p.D, p.D, o, qtok, p.D, 1.f, tq);
    if (tq == 0) {
#pragma unroll
      for (int r = 0; r < 2; ++r)
        if (qtok[r] >= 0) p.lse[base + qtok[r]] = l[r] > 0.f ? (m[r] + log2f(l[r])) * kLn2 : INFINITY;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) wa_bwd_resident_kernel(const Params p, const Plan pl) {
  constexpr int DP = kResidentDim, LD = DP + kPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const ResBwdSmem<T> L(pl);
  T* sQall = at<T>(smem_raw, L.qall);
  T* sdOall = at<T>(smem_raw, L.doall);
  T* sZero = at<T>(smem_raw, L.zero);
  T* sK = at<T>(smem_raw, L.k);
  T* sV = at<T>(smem_raw, L.v);
  T* sXk = at<T>(smem_raw, L.xk);
  T* sXv = at<T>(smem_raw, L.xv);
  float* sLse2 = at<float>(smem_raw, L.lse2);
  float* sDelta = at<float>(smem_raw, L.delta);
  float* sXGk = at<float>(smem_raw, L.xgk);
  float* sXGv = at<float>(smem_raw, L.xgv);
  const Meta m = meta_at(at<int>(smem_raw, L.meta));
  const Meta xm = meta_at(at<int>(smem_raw, L.xm));

  const int bh = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int row0 = warp * 16;
  const T* qh = head_of<T>(p.q, bh, p.H);
  const T* kh = head_of<T>(p.k, bh, p.H);
  const T* vh = head_of<T>(p.v, bh, p.H);
  const T* doh = head_of<T>(p.dout, bh, p.H);
  const T* oh = static_cast<const T*>(p.out) + static_cast<int64_t>(bh) * p.N * p.D;
  const T* xkh = static_cast<const T*>(p.extra) + static_cast<int64_t>(bh) * pl.E * p.D;
  const T* xvh = xkh + static_cast<int64_t>(pl.BH) * pl.E * p.D;
  const float scale_log2 = p.scale * kLog2e;
  const Gathered<T> qop{sQall, m.tok, sZero}, dop{sdOall, m.tok, sZero};

  fill_meta(xm, range_rows(0, pl.E), pl, kRows);
  if (threadIdx.x < DP) sZero[threadIdx.x] = T(0.f);
  __syncthreads();
  load_tile<T, DP>(sXk, xkh, p.D, xm.tok, pl.Epad, p.D);
  load_tile<T, DP>(sXv, xvh, p.D, xm.tok, pl.Epad, p.D);
  cp_async_commit();

  // ---- phase 1: q, dO (kept), O of each block; delta; the pooled keys' gradients (registers)
  float dkx[DP / 8][4], dvx[DP / 8][4];
  zero(dkx);
  zero(dvx);
  for (int blk = 0; blk < pl.nblocks; ++blk) {
    __syncthreads();
    fill_meta(m, block_rows<T>(pl, blk), pl, kRows);
    __syncthreads();
    load_resident<T>(sQall, qh, p.q.sn, m.tok, kRows, p.D);
    load_resident<T>(sdOall, doh, p.dout.sn, m.tok, kRows, p.D);
    load_tile<T, DP>(sK, oh, p.D, m.tok, kRows, p.D);  // O
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    delta_rows<T, DP>(sDelta, sK, dop, m, p, pl, bh, true);
    row_stats(sLse2, sDelta, m, kRows, p, pl, bh, false);
    __syncthreads();
    extra_grads<T, DP>(dkx, dvx, sXk, sXv, pl.E, qop, dop, sLse2, sDelta, live_chunks(m, kRows), scale_log2, warp,
                       lane);
  }
#pragma unroll
  for (int jj = 0; jj < DP / 8; ++jj)
#pragma unroll
    for (int e = 0; e < 4; ++e) dkx[jj][e] *= p.scale;
  if (16 * warp < pl.P) {  // the pooled keys' reduced gradients, one warp per 16 of them
    store_f32<DP>(sXGk, dkx, 16 * warp, pl.P, p.D, lane, false);
    store_f32<DP>(sXGv, dvx, 16 * warp, pl.P, p.D, lane, false);
  }

  // ---- phase 2: k, v of each block; the single pass from the resident q, dO
  constexpr int LDP = kRows + kPad;
  static_assert(LDP == LD, "P and dS are staged in the k and v buffers");
  for (int blk = 0; blk < pl.nblocks; ++blk) {
    __syncthreads();
    fill_meta(m, block_rows<T>(pl, blk), pl, kRows);
    __syncthreads();
    load_tile<T, DP>(sK, kh, p.k.sn, m.tok, kRows, p.D);
    load_tile<T, DP>(sV, vh, p.v.sn, m.tok, kRows, p.D);
    cp_async_commit();
    row_stats(sLse2, sDelta, m, kRows, p, pl, bh, true);  // delta from phase 1, via the workspace
    cp_async_wait<0>();
    __syncthreads();
    const bool warp_on = m.tok[row0] >= 0;
    const unsigned on = warp_on ? same_tile_chunks(m, kRows, row0) : 0u;
    int tok[2], grp[2];
    float lse2[2], dlt[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + g + 8 * r;
      tok[r] = m.tok[row];
      grp[r] = m.grp[row];
      lse2[r] = sLse2[row];
      dlt[r] = sDelta[row];
    }
    float s[8][4], dp[8][4];
    if (warp_on) {
      q_step<T, DP, 64>(s, dp, qop, dop, row0, sK, sV, lse2, dlt, on, scale_log2, lane, [&](int col, int r, float x) {
        return m.tok[col] >= 0 && m.grp[col] == grp[r] ? x : -INFINITY;
      });
      float dq[DP / 8][4];
      zero(dq);
      mma_acc_pb<T, DP, 64>(dq, dp, sK, lane, on);
      dq_extra<T, DP>(dq, qop, dop, row0, sXk, sXv, pl.E, lse2, dlt, scale_log2, lane);
      store_acc<T, DP>(head_of<T>(p.dq, bh, p.H), p.dq.sn, dq, tok, p.D, p.scale, tq);
    }
    __syncthreads();  // every warp is done with k, v: P and dS go there
    if (warp_on) {
      for_each_acc<8>(tq, [&](int jj, int e, int col, int r) {
        if (e & 1) return;
        const int at_ = (row0 + g + 8 * r) * LDP + col;
        *reinterpret_cast<uint32_t*>(sK + at_) = Mma<T>::pack(s[jj][e], s[jj][e + 1]);
        *reinterpret_cast<uint32_t*>(sV + at_) = Mma<T>::pack(dp[jj][e], dp[jj][e + 1]);
      });
    }
    __syncthreads();
    if (warp_on) {
      float dk[DP / 8][4], dv[DP / 8][4];
      zero(dk);
      zero(dv);
      mma_acc_tb_pair<T, DP>(dv, sK, dop, dk, sV, qop, LDP, row0, lane, on);
#pragma unroll
      for (int jj = 0; jj < DP / 8; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[jj][e] *= p.scale;
      pool_spread<DP>(dk, dv, tok, sXGk, sXGv, pl, lane);
      store_acc<T, DP>(head_of<T>(p.dk, bh, p.H), p.dk.sn, dk, tok, p.D, 1.f, tq);
      store_acc<T, DP>(head_of<T>(p.dv, bh, p.H), p.dv.sn, dv, tok, p.D, 1.f, tq);
    }
  }
}

// ============================================================================ host side
void fail(const std::string& what) { throw std::invalid_argument(std::string("vitpose_kernels.") + kOp + ": " + what); }

// Shared memory a block may opt in to on the current device (the head-resident path needs ~220 KB).
int64_t device_smem_optin() {
  static int cached[64] = {0};
  int dev = 0;
  VITPOSE_CUDA_CHECK(kOp, cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  if (!cached[dev]) {
    int v = 0;
    VITPOSE_CUDA_CHECK(kOp, cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    cached[dev] = v;
  }
  return cached[dev];
}

Plan make_plan(const Params& p) {
  Plan pl{};
  pl.G = p.G;
  pl.Hg = p.Hg;
  pl.Wg = p.Wg;
  pl.wh = p.wh;
  pl.ww = p.ww;
  pl.N = p.N;
  pl.D = p.D;
  pl.H = p.H;
  pl.BH = p.B * p.H;
  pl.ay = pack_axis(p.Hg, p.wh, p.sh);
  pl.ax = pack_axis(p.Wg, p.ww, p.sw);
  pl.T = pl.ay.tiles * pl.ax.tiles;
  pl.S = p.wh * p.ww;
  pl.small = pl.S <= kRows;
  pl.RB = pl.small ? round16(pl.S) : kRows;
  pl.SPB = pl.small ? kRows / pl.RB : 1;
  pl.QB = pl.small ? 1 : cdiv(pl.S, kRows);
  pl.nblocks = pl.small ? cdiv(pl.T, pl.SPB) : pl.T * pl.QB;
  pl.ctas = pl.small ? cdiv(pl.nblocks, kBlocksPerCta) : pl.nblocks;
  pl.P = p.P;
  pl.E = p.P + p.G;
  pl.xres = pl.E <= kRows;
  pl.Epad = pl.xres ? round16(pl.E) : kRows;
  pl.ntw = cdiv(p.Wg, p.ww);
  pl.ntyp = p.P ? cdiv(p.Hg, p.wh) : 0;
  pl.Rh = p.Rh;
  pl.Rw = p.Rw;
  pl.RT = p.Rh + p.Rw;
  pl.RTpad = round16(pl.RT);
  pl.gqb = cdiv(p.G, kRows);
  pl.npart_grid = pl.E ? (pl.xres ? pl.ctas : pl.nblocks) : 0;
  pl.npart = pl.E ? pl.npart_grid + pl.gqb : 0;
  pl.rel_slots = pl.RT ? pl.nblocks : 0;
  pl.prep = p.P > 0 || !pl.small;
  pl.resident = p.resident && p.P > 0 && p.G == 0 && pl.RT == 0 && pl.small && p.D > 32 && p.D <= kResidentDim &&
                pl.xres && static_cast<int64_t>(std::max(ResFwdSmem<__half>(pl).total, ResBwdSmem<__half>(pl).total)) <=
                                device_smem_optin();
  if (pl.resident) pl.npart_grid = pl.npart = 0;
  const int64_t BH = pl.BH, D = p.D;
  int64_t off = 0;
  pl.ws_delta = off;
  off += (pl.prep || p.G > 0) ? BH * p.N : 0;
  pl.ws_part = off;
  off += 2 * BH * pl.npart * pl.E * D;
  pl.ws_xg = off;
  off += pl.resident ? 0 : 2 * BH * p.P * D;
  pl.ws_rel = off;
  off += BH * pl.rel_slots * pl.RT * D;
  pl.ws_total = off;
  return pl;
}

void check_operand(const char* name, const void* ptr, int64_t sb, int64_t sh, int64_t sn, bool required) {
  if (!ptr) {
    if (required) fail(std::string(name) + " is null");
    return;
  }
  if (reinterpret_cast<std::uintptr_t>(ptr) % 16 || sb % 8 || sh % 8 || sn % 8)
    fail(std::string(name) + ": rows must be 16-byte aligned (pointer and strides multiples of 8 elements)");
}

void check_geometry(const Params& p) {
  if (p.B < 1 || p.H < 1 || p.B > 65535 || static_cast<int64_t>(p.B) * p.H > 65535)
    fail("need 1 <= B and B * H <= 65535");
  if (p.D < 8 || p.D > 128 || p.D % 8) fail("head dim must be a multiple of 8 in [8, 128]");
  if (p.Hg < 1 || p.Wg < 1 || p.Hg >= 32768 || p.Wg >= 32768) fail("grid sides must be in [1, 32767]");
  if (p.G < 0 || static_cast<int64_t>(p.G) + static_cast<int64_t>(p.Hg) * p.Wg != p.N) fail("N != G + Hg*Wg");
  if (p.wh < 1 || p.ww < 1 || p.sh < 0 || p.sw < 0 || p.sh >= p.wh || p.sw >= p.ww)
    fail("bad window/shift");
  if (p.P < 0 || (p.P > 0 && p.P != cdiv(p.Hg, p.wh) * cdiv(p.Wg, p.ww))) fail("P must be 0 or the pooled tile count");
  if (p.Rh && p.Rh != 2 * p.wh - 1) fail("Rh must be 0 or 2*wh-1");
  if (p.Rw && p.Rw != 2 * p.ww - 1) fail("Rw must be 0 or 2*ww-1");
  if (p.Rh + p.Rw > kMaxRelRows) fail("rel-pos tables with more than 128 rows together are not supported");
  if (static_cast<int64_t>(p.N) * p.D >= (int64_t(1) << 31)) fail("one head spans 2**31 elements or more");
}

void check_inputs(const Params& p) {
  check_geometry(p);
  if ((p.rel_h != nullptr) != (p.Rh > 0) || (p.rel_w != nullptr) != (p.Rw > 0)) fail("rel-pos sizes/pointers mismatch");
  check_operand("q", p.q.ptr, p.q.sb, p.q.sh, p.q.sn, true);
  check_operand("k", p.k.ptr, p.k.sb, p.k.sh, p.k.sn, true);
  check_operand("v", p.v.ptr, p.v.sb, p.v.sh, p.v.sn, true);
  if (!p.out || !p.lse || (p.P + p.G > 0 && !p.extra)) fail("out, lse (and extra when P + G > 0) are required");
  for (const void* ptr : {static_cast<const void*>(p.out), static_cast<const void*>(p.extra)})
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16) fail("outputs must be 16-byte aligned");
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  VITPOSE_CUDA_CHECK(kOp, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes)));
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, int blocks, int heads, size_t smem, cudaStream_t stream, const Args&... args) {
  if (blocks < 1) return;
  if (smem > 48 * 1024) set_smem(kernel, smem);
  kernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(heads)), kThreads, smem, stream>>>(args...);
  check_launch(kOp);
}

template <typename T, int DP>
void launch_forward(const Params& p, const Plan& pl, cudaStream_t stream) {
  if constexpr (DP == kResidentDim) {
    if (pl.resident) {
      launch(wa_fwd_resident_kernel<T>, 1, pl.BH, ResFwdSmem<T>(pl).total, stream, p, pl);
      return;
    }
  }
  if (pl.E) launch(wa_pool_kernel<T>, pl.ntyp + (p.G > 0), pl.BH, 0, stream, p, pl);
  launch(wa_fwd_kernel<T, DP, false>, pl.ctas, pl.BH, FwdSmem<T, DP>(pl, false).total, stream, p, pl);
  if (p.G) launch(wa_fwd_kernel<T, DP, true>, pl.gqb, pl.BH, FwdSmem<T, DP>(pl, true).total, stream, p, pl);
}

template <typename T, int DP>
int64_t smem_bytes(const Plan& pl) {
  if (pl.resident) return static_cast<int64_t>(std::max(ResFwdSmem<T>(pl).total, ResBwdSmem<T>(pl).total));
  size_t m = FwdSmem<T, DP>(pl, false).total;
  if (pl.G) m = std::max(m, FwdSmem<T, DP>(pl, true).total);
  if (pl.prep) m = std::max(m, PrepSmem<T, DP>(pl).total);
  if (pl.G) m = std::max(m, DqSmem<T, DP>(pl, true).total);
  if (pl.small) {
    m = std::max(m, TileSmem<T, DP>(pl).total);
  } else {
    m = std::max(m, DkvSmem<T, DP>(pl).total);
    m = std::max(m, DqSmem<T, DP>(pl, false).total);
  }
  return static_cast<int64_t>(m);
}

template <typename T, int DP>
void launch_backward(const Params& p, const Plan& pl, cudaStream_t stream) {
  if constexpr (DP == kResidentDim) {
    if (pl.resident) {
      launch(wa_bwd_resident_kernel<T>, 1, pl.BH, ResBwdSmem<T>(pl).total, stream, p, pl);
      return;
    }
  }
  if (pl.prep) launch(wa_prep_kernel<T, DP>, pl.ctas, pl.BH, PrepSmem<T, DP>(pl).total, stream, p, pl);
  if (p.G) launch(wa_dq_kernel<T, DP, true>, pl.gqb, pl.BH, DqSmem<T, DP>(pl, true).total, stream, p, pl);
  const int reduce_blocks = cdiv(pl.E * p.D, kThreads);
  if (pl.P) launch(wa_reduce_kernel<T>, reduce_blocks, pl.BH, 0, stream, p, pl);  // before the spread
  if (pl.small) {
    launch(wa_tile_kernel<T, DP>, pl.ctas, pl.BH, TileSmem<T, DP>(pl).total, stream, p, pl);
  } else {
    launch(wa_dkv_kernel<T, DP>, pl.nblocks, pl.BH, DkvSmem<T, DP>(pl).total, stream, p, pl);
    launch(wa_dq_kernel<T, DP, false>, pl.nblocks, pl.BH, DqSmem<T, DP>(pl, false).total, stream, p, pl);
  }
  if (pl.E && !pl.P) launch(wa_reduce_kernel<T>, reduce_blocks, pl.BH, 0, stream, p, pl);
  if (pl.RT) launch(wa_rel_reduce_kernel, cdiv(pl.RT * p.D, kThreads), 1, 0, stream, p, pl);
}

// Head dims are padded up to one of four compiled tile widths (80 runs as 96, zero-filled):
// f(T(), std::integral_constant<int, DP>()).
template <typename T, typename F>
void dispatch_dim(int D, const F& f) {
  if (D <= 32)
    f(T(), std::integral_constant<int, 32>());
  else if (D <= 64)
    f(T(), std::integral_constant<int, 64>());
  else if (D <= 96)
    f(T(), std::integral_constant<int, 96>());
  else
    f(T(), std::integral_constant<int, 128>());
}

template <typename F>
void dispatch(int dtype, int D, const F& f) {
  if (dtype == static_cast<int>(DType::kBFloat16))
    dispatch_dim<__nv_bfloat16>(D, f);
  else if (dtype == static_cast<int>(DType::kFloat16))
    dispatch_dim<__half>(D, f);
  else
    fail("dtype must be float16 or bfloat16 (float32 runs on the triton backend)");
}

}  // namespace

void forward(const Params& p, int dtype, cudaStream_t stream) {
  check_inputs(p);
  const Plan pl = make_plan(p);
  dispatch(dtype, p.D, [&](auto t, auto dp) { launch_forward<decltype(t), decltype(dp)::value>(p, pl, stream); });
}

void backward(const Params& p, int dtype, cudaStream_t stream) {
  check_inputs(p);
  check_operand("dout", p.dout.ptr, p.dout.sb, p.dout.sh, p.dout.sn, true);
  check_operand("dq", p.dq.ptr, p.dq.sb, p.dq.sh, p.dq.sn, true);
  check_operand("dk", p.dk.ptr, p.dk.sb, p.dk.sh, p.dk.sn, true);
  check_operand("dv", p.dv.ptr, p.dv.sb, p.dv.sh, p.dv.sn, true);
  if ((p.rel_h != nullptr) != (p.drel_h != nullptr) || (p.rel_w != nullptr) != (p.drel_w != nullptr))
    fail("rel-pos gradients must be given exactly when rel-pos inputs are");
  const Plan pl = make_plan(p);
  if (pl.ws_total > 0 && !p.work) fail("workspace is required");
  dispatch(dtype, p.D, [&](auto t, auto dp) { launch_backward<decltype(t), decltype(dp)::value>(p, pl, stream); });
}

int64_t workspace_floats(const Params& p) {
  check_geometry(p);
  return make_plan(p).ws_total;
}

int64_t max_smem_bytes(const Params& p, int dtype) {
  check_geometry(p);
  const Plan pl = make_plan(p);
  int64_t out = 0;
  dispatch(dtype, p.D, [&](auto t, auto dp) { out = smem_bytes<decltype(t), decltype(dp)::value>(pl); });
  return out;
}

}  // namespace wa
}  // namespace vitpose
