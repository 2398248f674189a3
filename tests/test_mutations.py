"""The parity harness must catch defects planted on purpose, in every backend.

Each entry of PLANTS is one defect in one backend: exact source snippets of one file, each of
which must occur exactly once, and their replacements. The test applies them to a copy of the
source, runs the shared harness (tests/parity.py) at CI shapes with the broken copy serving as
that backend, and passes only if the harness raises AssertionError (a mismatch, NaN or RMS
failure, not a crash). Python backends run as a freshly executed copy of the module (its
torch.library ops in a namespace of their own, substituted for the registered backend while the
harness runs it); CUDA kernels run as a copy of csrc/ built by the CPU emulator.

When you rewrite a kernel a snippet stops matching and the test fails saying which entry to
update: find the same defect in the new code and change that entry (tests/README.md).
"""
from __future__ import annotations

import dataclasses
import importlib
import linecache
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

import cuda_emulator
import parity
from vitpose_kernels import dispatch
from vitpose_kernels._attention_ops import PLANS, forced_plan

REPO = Path(__file__).resolve().parents[1]
REF_WA = "vitpose_kernels/reference/window_attention.py"
# The Triton window_attention is a package (tiles, forward, backward, host): a plant names one of
# its files and runs as a mutated copy of the whole package (load_package_mutant).
TRI_WA_DIR = "vitpose_kernels/triton_backend/window_attention/"
TRI_WA_HOST, TRI_WA_FWD, TRI_WA_BWD = (TRI_WA_DIR + f for f in ("host.py", "forward.py", "backward.py"))
CUDA_WA_PY = "vitpose_kernels/cuda_backend/window_attention.py"
CUDA_WA = "csrc/window_attention.cu"
REF_DH, TRI_DH, CUDA_DH = ("vitpose_kernels/reference/decode_heatmaps.py",
                           "vitpose_kernels/triton_backend/decode_heatmaps.py", "csrc/decode_heatmaps.cu")
REF_UT, TRI_UT, CUDA_UT = ("vitpose_kernels/reference/udp_targets.py",
                           "vitpose_kernels/triton_backend/udp_targets.py", "csrc/udp_targets.cu")
REF_MA, TRI_MA, CUDA_MA = ("vitpose_kernels/reference/masked_attention.py",
                           "vitpose_kernels/triton_backend/masked_attention.py", "csrc/masked_attention.cu")


@dataclasses.dataclass(frozen=True)
class Plant:
    mutation: str         # the defect
    backend: str          # "reference", "triton" or "cuda"
    file: str             # repository-relative path the defect is planted in
    edits: tuple          # ((exact snippet, replacement), ...): each snippet occurs once in file
    check: str            # key of CHECKS: which harness check must fail
    env: tuple = ()       # ((variable, value), ...) while the check runs (emulator schedules)


def _e(*pairs):
    return tuple(pairs)


# Grid 5x6 in 3x3 windows shifted by (1, 2) (partial cells; the negative shift gives other cells),
# pooled tiles, two global tokens, relative position (square windows, so h and w can be swapped).
ATTENTION = parity.AttentionCase(grid=(5, 6), window=(3, 3), shift=(1, 2), pool=True, num_global=2,
                                 rel_pos=True, B=1, H=1, D=16)


def _attention(backend, impl, grads):
    case = dataclasses.replace(ATTENTION, dtype=torch.float16 if backend == "cuda" else torch.float32)
    parity.check_window_attention(backend, case, torch.device("cpu"), grads=grads, implementation=impl)


# 17 queries over 45 keys, a random mask with rows that see nothing (every 5th, row 0 among them);
# square (37 x 37) where the defect is a transposed mask.
MASKED = parity.MaskedCase(B=1, H=2, Lq=17, Lk=45, D=16, mask="random", form="bool4")


def _masked(backend, impl, **shape):
    case = dataclasses.replace(MASKED, dtype=torch.float16 if backend == "cuda" else torch.float32, **shape)
    parity.check_masked_attention(backend, case, torch.device("cpu"), grads=False, implementation=impl)


CHECKS = {  # forward-only where the defect shows in the forward: the interpreter is slow
    "attention forward": lambda backend, impl: _attention(backend, impl, grads=False),
    "attention": lambda backend, impl: _attention(backend, impl, grads=True),
    "decode": lambda backend, impl: parity.check_decode_heatmaps(
        backend, parity.HeatmapCase(B=1, K=5, size=(8, 6), flip=True, boxes=True), torch.device("cpu"),
        implementation=impl),
    "targets": lambda backend, impl: parity.check_udp_targets(
        backend, parity.TargetCase(B=1, K=5), torch.device("cpu"), implementation=impl),
    "masked forward": lambda backend, impl: _masked(backend, impl),
    "masked square forward": lambda backend, impl: _masked(backend, impl, Lq=37, Lk=37),
}

# One table, one entry per (defect, backend). Keep the snippets short but unique.
PLANTS = [
    # ---- softmax scale off by 1 %
    Plant("softmax scale off by 1%", "reference", REF_WA, _e(
        ("    B, H, N, D = q.shape\n    acc = torch.promote_types",
         "    B, H, N, D = q.shape\n    spec = __import__('dataclasses').replace(spec, scale=spec.scale * 1.01)\n"
         "    acc = torch.promote_types")), "attention forward"),
    Plant("softmax scale off by 1%", "triton", TRI_WA_HOST, _e(
        ("        qk_scale = scale * LOG2E\n        _launch(fw.fwd_grid_kernel",
         "        qk_scale = scale * 1.01 * LOG2E\n        _launch(fw.fwd_grid_kernel")), "attention forward"),
    Plant("softmax scale off by 1%", "cuda", CUDA_WA, _e(
        ("  const float scale_log2 = p.scale * kLog2e;\n  uint32_t qf[DP / 16][4];",
         "  const float scale_log2 = p.scale * kLog2e * 1.01f;\n  uint32_t qf[DP / 16][4];")), "attention forward"),
    # ---- a cell boundary shifted by one token
    Plant("cell boundary shifted by one token", "reference", REF_WA, _e(
        ("before = (window - shift) % window", "before = (window - shift + 1) % window")), "attention forward"),
    Plant("cell boundary shifted by one token", "triton", TRI_WA_HOST, _e(
        ("before = (w - s) % w", "before = (w - s + 1) % w")), "attention forward"),
    Plant("cell boundary shifted by one token", "cuda", CUDA_WA, _e(  # the packing's `before` = (w - s + 1) % w
        ("pl.ay = pack_axis(p.Hg, p.wh, p.sh);", "pl.ay = pack_axis(p.Hg, p.wh, (p.sh + p.wh - 1) % p.wh);")),
          "attention forward"),
    # ---- the shift applied with the wrong sign
    Plant("shift with the wrong sign", "reference", REF_WA, _e(
        ("before = (window - shift) % window", "before = shift % window")), "attention forward"),
    Plant("shift with the wrong sign", "triton", TRI_WA_HOST, _e(
        ("before = (w - s) % w", "before = s % w")), "attention forward"),
    Plant("shift with the wrong sign", "cuda", CUDA_WA, _e(  # the packing's `before` = s % w
        ("pl.ay = pack_axis(p.Hg, p.wh, p.sh);", "pl.ay = pack_axis(p.Hg, p.wh, (p.wh - p.sh) % p.wh);")),
          "attention forward"),
    # ---- a pooled mean missing one tile member (the first member's value is left out of the sum)
    Plant("pooled mean missing one tile member", "reference", REF_WA, _e(
        ("pooled = F.avg_pool2d(grid,",
         "grid = grid.clone()\n    grid[..., 0, 0] = 0\n    pooled = F.avg_pool2d(grid,")), "attention forward"),
    Plant("pooled mean missing one tile member", "triton", TRI_WA_FWD, _e(
        ("ck += load_rows(K, tok, ok, skn, skd, d, D)",
         "ck += load_rows(K, tok, ok & ((i + r + x) > 0), skn, skd, d, D)"),
        ("cv += load_rows(V, tok, ok, svn, svd, d, D)",
         "cv += load_rows(V, tok, ok & ((i + r + x) > 0), svn, svd, d, D)")),
          "attention forward"),
    Plant("pooled mean missing one tile member", "cuda", CUDA_WA, _e(  # wa_pool_kernel
        ("        for (int c = 0; c < cols; ++c) {\n          const int tok = pl.G + (y0 + r) * pl.Wg + x0 + c;",
         "        for (int c = 0; c < cols; ++c) {\n          if (r == 0 && c == 0) continue;\n"
         "          const int tok = pl.G + (y0 + r) * pl.Wg + x0 + c;")), "attention forward"),
    # ---- one grid row not seeing a global token (the first grid token loses global token 0)
    Plant("one grid row not seeing a global token", "reference", REF_WA, _e(
        ("        logits.append(torch.matmul(qc, kg[:, :, None].transpose(-1, -2)) * spec.scale)",
         "        glob = torch.matmul(qc, kg[:, :, None].transpose(-1, -2)) * spec.scale\n"
         "        first = _to_cells(torch.arange(hg * wg, device=q.device).view(1, 1, hg, wg, 1), spec)\n"
         "        c, s = ((first[0, 0, :, :, 0] == 0) & valid).nonzero()[0].tolist()\n"
         "        glob[:, :, c, s, 0] = float('-inf')\n"
         "        logits.append(glob)")), "attention forward"),
    Plant("one grid row not seeing a global token", "triton", TRI_WA_FWD, _e(
        ("softmax_step(acc, m_i, l_i, q, xk, xv, 0.0, (e < E)[None, :], qk_scale, False, PREC)",
         "softmax_step(acc, m_i, l_i, q, xk, xv, 0.0, (e < E)[None, :] & ~((tok_q == G)[:, None] & "
         "(e == E - G)[None, :]), qk_scale, False, PREC)")), "attention forward"),
    Plant("one grid row not seeing a global token", "cuda", CUDA_WA, _e(  # extra row P = global token 0
        ("            sc[jj][e] = e0 + col < pl.E && col < n ? sc[jj][e] * scale_log2 : -INFINITY;",
         "            sc[jj][e] = e0 + col < pl.E && col < n && !(e0 + col == pl.P && qtok[r] == pl.G)\n"
         "                            ? sc[jj][e] * scale_log2 : -INFINITY;")), "attention forward"),
    # ---- relative position: h and w swapped
    Plant("rel-pos h and w swapped", "reference", REF_WA, _e(
        ("_rel_pos_logits(qc, rel_pos_h, rel_pos_w, spec)", "_rel_pos_logits(qc, rel_pos_w, rel_pos_h, spec)")),
          "attention forward"),
    Plant("rel-pos h and w swapped", "triton", TRI_WA_FWD, _e(
        ("rel_logits(qrh, ly_q, ly_k, WH, WH_PAD, RH_PAD, PREC)",
         "rel_logits(qrh, lx_q, lx_k, WW, WW_PAD, RH_PAD, PREC)"),
        ("rel_logits(qrw, lx_q, lx_k, WW, WW_PAD, RW_PAD, PREC)",
         "rel_logits(qrw, ly_q, ly_k, WH, WH_PAD, RW_PAD, PREC)")),
          "attention forward"),
    Plant("rel-pos h and w swapped", "cuda", CUDA_WA, _e(
        ("qr_row[(qyx >> 16) - (kyx >> 16) + pl.wh - 1]", "qr_row[(qyx & 0xffff) - (kyx & 0xffff) + pl.ww - 1]"),
        ("qr_row[pl.Rh + (qyx & 0xffff) - (kyx & 0xffff) + pl.ww - 1]",
         "qr_row[pl.Rh + (qyx >> 16) - (kyx >> 16) + pl.wh - 1]")),
          "attention forward"),
    # ---- dq without its relative-position term
    Plant("dq missing its rel-pos term", "reference", REF_WA, _e(
        ("q = q_cells.reshape(B, H, nc, wh, ww, D)", "q = q_cells.detach().reshape(B, H, nc, wh, ww, D)")),
          "attention"),
    Plant("dq missing its rel-pos term", "triton", TRI_WA_BWD, _e(
        ("_rel_dq(by_h, ly, WH, th, q, WH_PAD, RH_PAD, PREC)\n        dq += dqr",
         "_rel_dq(by_h, ly, WH, th, q, WH_PAD, RH_PAD, PREC)\n        dq += 0.0 * dqr"),
        ("_rel_dq(by_w, lx, WW, tw, q, WW_PAD, RW_PAD, PREC)\n        dq += dqr",
         "_rel_dq(by_w, lx, WW, tw, q, WW_PAD, RW_PAD, PREC)\n        dq += 0.0 * dqr")), "attention"),
    Plant("dq missing its rel-pos term", "cuda", CUDA_WA, _e(  # wa_tile_kernel
        ("      if (rel) rel_dq<T, DP>(dq, sDR, sR, pl, row0, lane);\n      store_acc<T, DP>(dqh(),",
         "      store_acc<T, DP>(dqh(),")), "attention"),
    # ---- a missing __syncthreads (CUDA only: Triton and PyTorch have no explicit barriers to lose)
    Plant("missing __syncthreads", "cuda", CUDA_WA, _e(  # wa_tile_kernel, before the rel-pos sums of dS
        ("    if (rel) {\n      __syncthreads();\n      rel_accumulate(sDR, sdS32, kRows + 1, kRows, m, m, pl);",
         "    if (rel) {\n      rel_accumulate(sDR, sdS32, kRows + 1, kRows, m, m, pl);")), "attention",
          env=(("VPEMU_SCHEDULE", "serial-reverse"),)),  # one warp runs ahead: it reads unwritten dS
    # ---- decode_heatmaps: the DARK Newton step with the wrong sign
    Plant("DARK Newton step with the wrong sign", "reference", REF_DH, _e(
        ("return locs.float() - torch.stack([step_x, step_y], dim=-1)",
         "return locs.float() + torch.stack([step_x, step_y], dim=-1)")), "decode"),
    Plant("DARK Newton step with the wrong sign", "triton", TRI_DH, _e(
        ("px = px - (hd * dx - dxy * dy) / det", "px = px + (hd * dx - dxy * dy) / det")), "decode"),
    Plant("DARK Newton step with the wrong sign", "cuda", CUDA_DH, _e(
        ("kx = __fsub_rn(kx, step_x);", "kx = __fadd_rn(kx, step_x);")), "decode"),
    # ---- decode_heatmaps: flip indices off by one
    Plant("flip indices off by one", "reference", REF_DH, _e(
        ("flip_heatmaps.index_select(1, flip_indices)", "flip_heatmaps.index_select(1, flip_indices.roll(1))")),
          "decode"),
    Plant("flip indices off by one", "triton", TRI_DH, _e(
        ("fk = tl.load(fidx_ptr + k)", "fk = tl.load(fidx_ptr + (k + 1) % K)")), "decode"),
    Plant("flip indices off by one", "cuda", CUDA_DH, _e(
        ("p.flip_idx[k * p.fis]", "p.flip_idx[((k + 1) % p.K) * p.fis]")), "decode"),
    # ---- udp_targets: the Gaussian centred half a pixel off
    Plant("UDP target centred half a pixel off", "reference", REF_UT, _e(
        ("mu_ac = keypoints.float() * factor", "mu_ac = keypoints.float() * factor + 0.5")), "targets"),
    Plant("UDP target centred half a pixel off", "triton", TRI_UT, _e(
        ("mu_ac = kp * factor", "mu_ac = kp * factor + 0.5")), "targets"),
    Plant("UDP target centred half a pixel off", "cuda", CUDA_UT, _e(
        ("const float ax = __fmul_rn(kp[0], p.fx)", "const float ax = __fadd_rn(__fmul_rn(kp[0], p.fx), 0.5f)")),
          "targets"),
    # ---- masked_attention: softmax scale off by 1 %
    Plant("masked: softmax scale off by 1%", "reference", REF_MA, _e(
        ("logits = torch.matmul(q, k.transpose(-1, -2)) * scale", "logits = torch.matmul(q, k.transpose(-1, -2)) * scale * 1.01")),
          "masked forward"),
    Plant("masked: softmax scale off by 1%", "triton", TRI_MA, _e(
        ("qk_scale=scale * LOG2E", "qk_scale=scale * 1.01 * LOG2E")), "masked forward"),
    Plant("masked: softmax scale off by 1%", "cuda", "csrc/masked_attention_binding.cpp", _e(
        ("p.scale = static_cast<float>(scale);", "p.scale = static_cast<float>(scale) * 1.01f;")), "masked forward"),
    # ---- masked_attention: the mask ignored for one query row (row 0 sees every key)
    Plant("masked: mask ignored for one row", "reference", REF_MA, _e(
        ("        allowed = unpack_key_mask(key_mask, k.shape[2])\n",
         "        allowed = unpack_key_mask(key_mask, k.shape[2])\n"
         "        allowed = allowed.expand(*allowed.shape[:2], q.shape[2], -1).clone()\n"
         "        allowed[..., 0, :] = True\n")), "masked forward"),
    Plant("masked: mask ignored for one row", "triton", TRI_MA, _e(
        ("ok = ok & (tl.reshape(bits, (BLOCK_M, BLOCK_N)) != 0)",
         "ok = ok & ((tl.reshape(bits, (BLOCK_M, BLOCK_N)) != 0) | (rows == 0)[:, None])")), "masked forward"),
    Plant("masked: mask ignored for one row", "cuda", CUDA_MA, _e(
        ("return static_cast<uint32_t>(__ldg(m.base + i * m.sq + w)) & valid;",
         "return (i == 0 ? 0xffffffffu : static_cast<uint32_t>(__ldg(m.base + i * m.sq + w))) & valid;")),
          "masked forward"),
    # ---- masked_attention: the mask read transposed (query and key indices swapped)
    Plant("masked: mask transposed", "reference", REF_MA, _e(
        ("        allowed = unpack_key_mask(key_mask, k.shape[2])\n",
         "        allowed = unpack_key_mask(key_mask, k.shape[2]).transpose(-1, -2)\n")), "masked square forward"),
    Plant("masked: mask transposed", "triton", TRI_MA, _e(
        ("ok = ok & (tl.reshape(bits, (BLOCK_M, BLOCK_N)) != 0)",
         "ok = ok & (((tl.load(M + (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)[None, :] * smq + (rows // 32)[:, None], "
         "mask=ok, other=0) >> (rows % 32)[:, None]) & 1) != 0)")), "masked square forward"),
    Plant("masked: mask transposed", "cuda", CUDA_MA, _e(
        ("  return static_cast<uint32_t>(__ldg(m.base + i * m.sq + w)) & valid;",
         "  uint32_t t = 0;\n"
         "  for (int j = 0; j < 32 && 32 * w + j < m.Lq; ++j)\n"
         "    t |= ((static_cast<uint32_t>(__ldg(m.base + (32 * w + j) * m.sq + (i >> 5))) >> (i & 31)) & 1u) << j;\n"
         "  return t & valid;")), "masked square forward"),
    # ---- masked_attention: a query without keys gives NaN instead of zeros
    Plant("masked: a row without keys gives NaN", "reference", REF_MA, _e(
        ("        logits = logits.masked_fill(~has_key, 0.0)\n", "")), "masked forward"),
    Plant("masked: a row without keys gives NaN", "triton", TRI_MA, _e(
        ("l_safe = tl.where(has_key, l_i, 1.0)", "l_safe = l_i")), "masked forward"),
    Plant("masked: a row without keys gives NaN", "cuda", CUDA_MA, _e(
        ("sStat[3 * kMaxBM + row] = lt > 0.f ? 1.f / lt : 0.f;", "sStat[3 * kMaxBM + row] = 1.f / lt;")),
          "masked forward"),
]

OP_OF_CHECK = {"attention forward": "window_attention", "attention": "window_attention",
               "decode": "decode_heatmaps", "targets": "udp_targets", "masked forward": "masked_attention",
               "masked square forward": "masked_attention"}


def mutated_source(plant: Plant) -> str:
    text = (REPO / plant.file).read_text()
    for snippet, replacement in plant.edits:
        n = text.count(snippet)
        if n != 1:
            raise AssertionError(
                f"mutation {plant.mutation!r} [{plant.backend}]: the snippet occurs {n} times in {plant.file} "
                f"(must be exactly once): the code changed, so update this entry of PLANTS in "
                f"tests/test_mutations.py to plant the same defect in the new code.\nsnippet: {snippet!r}")
        text = text.replace(snippet, replacement)
    return text


def load_python_mutant(plant: Plant, text: str, tag: str):
    """Execute a mutated copy of a backend module; returns (module, the function it registers for
    the op, or its module-level function of the op's name for the reference)."""
    name = plant.file[:-3].replace("/", ".")
    package = name.rsplit(".", 1)[0]
    importlib.import_module(name)  # the original first: the copy shares its package and imports
    mutant_name = f"{name}__mutant_{tag}"
    # Its own torch.library names: the original ops stay registered and untouched (ops defined in
    # the module, and ops the module has vitpose_kernels._head_ops define for its backend).
    text = text.replace('"vitpose_kernels::', f'"vitpose_kernels_mutant_{tag}::')
    text = re.sub(r'(define_\w+\(\s*)"(\w+)"', rf'\1"\2_mutant_{tag}"', text)
    filename = f"<mutant {tag}: {plant.file}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)  # triton reads the source
    module = types.ModuleType(mutant_name)
    module.__package__, module.__file__ = package, filename
    sys.modules[mutant_name] = module  # torch.library resolves annotations through sys.modules
    op = OP_OF_CHECK[plant.check]
    captured = {}
    real_register = dispatch.register

    def capture(op_name, backend, reasons=None):
        def wrap(fn):
            captured[(op_name, backend)] = fn
            return fn
        return wrap

    dispatch.register = capture
    try:
        exec(compile(text, filename, "exec"), module.__dict__)
    finally:
        dispatch.register = real_register
    fn = captured.get((op, plant.backend)) or getattr(module, op)
    return module, fn


def in_backend_package(plant: Plant) -> bool:
    """The plant's file belongs to a backend that is a package of its own (one op's kernels split
    into several files, e.g. vitpose_kernels/triton_backend/window_attention/)."""
    parent = (REPO / plant.file).parent
    return (parent / "__init__.py").exists() and parent.name not in ("reference", "triton_backend", "cuda_backend")


def load_package_mutant(plant: Plant, text: str, tag: str):
    """A copy of the plant's whole backend package with its file mutated, imported as a sibling
    package of its own (its torch.library ops renamed like load_python_mutant's); returns
    (package, the function it registers for the op)."""
    pkg_dir = (REPO / plant.file).parent
    parent_name = ".".join(Path(plant.file).parent.parent.parts)
    parent = importlib.import_module(parent_name)
    importlib.import_module(f"{parent_name}.{pkg_dir.name}")  # the original first (shared imports)
    root = Path(tempfile.mkdtemp(prefix="vk-mutant-"))
    name = f"{pkg_dir.name}__mutant_{tag}"
    shutil.copytree(pkg_dir, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / name / Path(plant.file).name).write_text(text)
    for f in (root / name).glob("*.py"):  # real files: triton reads the kernels' source
        src = f.read_text()
        renamed = re.sub(r'(define_\w+\(\s*)"(\w+)"', rf'\1"\2_mutant_{tag}"',
                         src.replace('"vitpose_kernels::', f'"vitpose_kernels_mutant_{tag}::'))
        if renamed != src:
            f.write_text(renamed)
    op, captured, real_register = OP_OF_CHECK[plant.check], {}, dispatch.register

    def capture(op_name, backend, reasons=None):
        def wrap(fn):
            captured[(op_name, backend)] = fn
            return fn
        return wrap

    parent.__path__.append(str(root))
    dispatch.register = capture
    try:
        module = importlib.import_module(f"{parent_name}.{name}")
    finally:
        dispatch.register = real_register
        parent.__path__.remove(str(root))
    return module, captured[(op, plant.backend)]


def _mutant_opt(plant: Plant) -> tuple:
    """The file that differs is compiled at -O0 (a third of -O1's time; the CI shapes are tiny),
    everything else is the shared -O1 build of the real kernels."""
    return ((Path(plant.file).name, "-O0"),)


class _MutantTrees(dict):
    """Each csrc/ plant's mutant tree, built when a test first asks for it (under pytest-xdist a
    worker builds only its own plants' trees: one compile of the file that differs, the rest of
    the objects shared and cached by content)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, plant: Plant) -> Path:
        tree = self.root / _tag(plant) / "csrc"
        shutil.copytree(REPO / "csrc", tree)
        (tree / Path(plant.file).name).write_text(mutated_source(plant))
        cuda_emulator.build(csrc=tree, file_opt=dict(_mutant_opt(plant)))
        self[plant] = tree
        return tree


@pytest.fixture(scope="module")
def mutant_trees(tmp_path_factory):
    return _MutantTrees(tmp_path_factory.mktemp("mutants"))


def _tag(plant: Plant) -> str:
    return f"{PLANTS.index(plant)}"


def _id(plant: Plant) -> str:
    return f"{plant.mutation} [{plant.backend}]"


def _skip_unless_runs(plant: Plant):
    if plant.backend == "cuda":
        why = cuda_emulator.skip_reason()
        if why:
            pytest.skip(f"CUDA emulator unavailable: {why}")
    elif plant.backend == "triton":
        why = parity.skip_reason(OP_OF_CHECK[plant.check], "triton")
        if why:
            pytest.skip(f"triton backend unavailable: {why}")


# The Triton window_attention has two launch plans (host.Plan.kind: tiles spread over programs,
# or one program per (batch, head)); each of its defects is planted once and must be caught with
# either plan serving the mutated copy.
_LOADED: dict = {}  # plant -> (mutant module, its function of the op)
RUNS = [(plant, plan) for plant in PLANTS
        for plan in (PLANS if plant.backend == "triton" and OP_OF_CHECK[plant.check] == "window_attention"
                     else (None,))]


def _run_id(run) -> str:
    plant, plan = run
    return _id(plant) if plan is None else f"{plant.mutation} [{plant.backend}, {plan} plan]"


@pytest.mark.parametrize("run", RUNS, ids=_run_id)
def test_harness_catches_planted_defect(run, mutant_trees, monkeypatch, record_property):
    plant, plan = run
    _skip_unless_runs(plant)
    text = mutated_source(plant)
    for var, value in plant.env:
        monkeypatch.setenv(var, value)
    check = CHECKS[plant.check]
    with pytest.raises(AssertionError) as caught, forced_plan(plan):
        if plant.file.startswith("csrc/"):
            with cuda_emulator.emulated(csrc=mutant_trees[plant], file_opt=_mutant_opt(plant)):
                check(plant.backend, None)
        else:
            if plant not in _LOADED:  # once per plant: the same mutant serves both plans
                load = load_package_mutant if in_backend_package(plant) else load_python_mutant
                _LOADED[plant] = load(plant, text, _tag(plant))
            module, fn = _LOADED[plant]
            if plant.backend == "cuda":
                with cuda_emulator.emulated():
                    cuda_emulator.register_cpu_kernels(module)
                    check(plant.backend, fn)
            else:
                check(plant.backend, fn)
    first = str(caught.value).strip().splitlines()[0][:160]
    where = plant.backend if plan is None else f"{plant.backend}/{plan}"
    record_property("mutation caught", f"caught  {plant.mutation:40s} [{where:12s}] {first}")


def test_every_defect_is_planted_in_every_backend():
    """The table covers each defect in each backend that can have it."""
    by_defect = {}
    for p in PLANTS:
        by_defect.setdefault(p.mutation, set()).add(p.backend)
    cuda_only = {"missing __syncthreads"}
    for mutation, backends in by_defect.items():
        want = {"cuda"} if mutation in cuda_only else {"reference", "triton", "cuda"}
        assert backends == want, f"{mutation}: planted in {sorted(backends)}, expected {sorted(want)}"
    assert len(by_defect) == 15


def test_unmutated_copies_pass():
    """The machinery itself: an unmodified copy of a Python backend, run the same way, passes."""
    plant = Plant("none", "triton", TRI_UT, (), "targets")
    _skip_unless_runs(plant)
    _, fn = load_python_mutant(plant, (REPO / plant.file).read_text(), "clean")
    CHECKS["targets"]("triton", fn)
