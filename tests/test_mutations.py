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

import concurrent.futures
import dataclasses
import importlib
import linecache
import os
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

import cuda_emulator
import parity
from vitpose_kernels import dispatch

REPO = Path(__file__).resolve().parents[1]
REF_WA = "vitpose_kernels/reference/window_attention.py"
TRI_WA = "vitpose_kernels/triton_backend/window_attention.py"
CUDA_WA_PY = "vitpose_kernels/cuda_backend/window_attention.py"
CUDA_WA = "csrc/window_attention.cu"
REF_DH, TRI_DH, CUDA_DH = ("vitpose_kernels/reference/decode_heatmaps.py",
                           "vitpose_kernels/triton_backend/decode_heatmaps.py", "csrc/decode_heatmaps.cu")
REF_UT, TRI_UT, CUDA_UT = ("vitpose_kernels/reference/udp_targets.py",
                           "vitpose_kernels/triton_backend/udp_targets.py", "csrc/udp_targets.cu")


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


CHECKS = {  # forward-only where the defect shows in the forward: the interpreter is slow
    "attention forward": lambda backend, impl: _attention(backend, impl, grads=False),
    "attention": lambda backend, impl: _attention(backend, impl, grads=True),
    "decode": lambda backend, impl: parity.check_decode_heatmaps(
        backend, parity.HeatmapCase(B=1, K=5, size=(8, 6), flip=True, boxes=True), torch.device("cpu"),
        implementation=impl),
    "targets": lambda backend, impl: parity.check_udp_targets(
        backend, parity.TargetCase(B=1, K=5), torch.device("cpu"), implementation=impl),
}

# One table, one entry per (defect, backend). Keep the snippets short but unique.
PLANTS = [
    # ---- softmax scale off by 1 %
    Plant("softmax scale off by 1%", "reference", REF_WA, _e(
        ("    B, H, N, D = q.shape\n    acc = torch.promote_types",
         "    B, H, N, D = q.shape\n    spec = __import__('dataclasses').replace(spec, scale=spec.scale * 1.01)\n"
         "    acc = torch.promote_types")), "attention forward"),
    Plant("softmax scale off by 1%", "triton", TRI_WA, _e(
        ("window_attention_op(q, k, v, rel_pos_h, rel_pos_w, geom, spec.pool, spec.scale)",
         "window_attention_op(q, k, v, rel_pos_h, rel_pos_w, geom, spec.pool, spec.scale * 1.01)")), "attention forward"),
    Plant("softmax scale off by 1%", "cuda", "csrc/window_attention_binding.cpp", _e(
        ("p.scale = static_cast<float>(scale);", "p.scale = static_cast<float>(scale) * 1.01f;")), "attention forward"),
    # ---- a cell boundary shifted by one token
    Plant("cell boundary shifted by one token", "reference", REF_WA, _e(
        ("before = (window - shift) % window", "before = (window - shift + 1) % window")), "attention forward"),
    Plant("cell boundary shifted by one token", "triton", TRI_WA, _e(
        ("self.top = (self.wh - sh) % self.wh", "self.top = (self.wh - sh + 1) % self.wh")), "attention forward"),
    Plant("cell boundary shifted by one token", "cuda", CUDA_WA, _e(
        ("c.pad_t = (p.wh - p.sh) % p.wh;", "c.pad_t = (p.wh - p.sh + 1) % p.wh;")), "attention forward"),
    # ---- the shift applied with the wrong sign
    Plant("shift with the wrong sign", "reference", REF_WA, _e(
        ("before = (window - shift) % window", "before = shift % window")), "attention forward"),
    Plant("shift with the wrong sign", "triton", TRI_WA, _e(
        ("self.top = (self.wh - sh) % self.wh", "self.top = sh % self.wh")), "attention forward"),
    Plant("shift with the wrong sign", "cuda", CUDA_WA, _e(
        ("c.pad_t = (p.wh - p.sh) % p.wh;", "c.pad_t = p.sh % p.wh;")), "attention forward"),
    # ---- a pooled mean missing one tile member (the first member's value is left out of the sum)
    Plant("pooled mean missing one tile member", "reference", REF_WA, _e(
        ("pooled = F.avg_pool2d(grid,",
         "grid = grid.clone()\n    grid[..., 0, 0] = 0\n    pooled = F.avg_pool2d(grid,")), "attention forward"),
    Plant("pooled mean missing one tile member", "triton", TRI_WA, _e(
        ("m = (cmask & ((x * 0 + y) < HG))", "m = (cmask & ((x * 0 + y) < HG) & ((r + c + tx + ty) > 0))")),
          "attention forward"),
    Plant("pooled mean missing one tile member", "cuda", CUDA_WA_PY, _e(
        ("kp, vp = pooled_tokens(k[:, :, G:], spec)",
         "kp, vp = pooled_tokens(torch.cat([k[:, :, G:G + 1] * 0, k[:, :, G + 1:]], 2), spec)")), "attention forward"),
    # ---- one grid row not seeing a global token (the first grid token loses global token 0)
    Plant("one grid row not seeing a global token", "reference", REF_WA, _e(
        ("        logits.append(torch.matmul(qc, kg[:, :, None].transpose(-1, -2)) * spec.scale)",
         "        glob = torch.matmul(qc, kg[:, :, None].transpose(-1, -2)) * spec.scale\n"
         "        first = _to_cells(torch.arange(hg * wg, device=q.device).view(1, 1, hg, wg, 1), spec)\n"
         "        c, s = ((first[0, 0, :, :, 0] == 0) & valid).nonzero()[0].tolist()\n"
         "        glob[:, :, c, s, 0] = float('-inf')\n"
         "        logits.append(glob)")), "attention forward"),
    Plant("one grid row not seeing a global token", "triton", TRI_WA, _e(
        ("_softmax_step(acc, m_i, l_i, q, k, v, no_bias, (e < E)[None, :], qk_scale, PREC)",
         "_softmax_step(acc, m_i, l_i, q, k, v, no_bias, (e < E)[None, :] & ~((tok_q == G)[:, None] & "
         "(e == E - G)[None, :]), qk_scale, PREC)")), "attention forward"),
    Plant("one grid row not seeing a global token", "cuda", CUDA_WA, _e(
        ("      if (n0 + col >= seg.len) {\n        x = -INFINITY;",
         "      if (n0 + col >= seg.len || (seg.kind == kExtra && n0 + col == p.P && qs.kind == kCell && qok[r] &&\n"
         "                                  qyx[r] == 0)) {\n        x = -INFINITY;")), "attention forward"),
    # ---- relative position: h and w swapped
    Plant("rel-pos h and w swapped", "reference", REF_WA, _e(
        ("_rel_pos_logits(qc, rel_pos_h, rel_pos_w, spec)", "_rel_pos_logits(qc, rel_pos_w, rel_pos_h, spec)")),
          "attention forward"),
    Plant("rel-pos h and w swapped", "triton", TRI_WA, _e(
        ("jh = ly_q[:, None] - ly_k[None, :] + WH - 1", "jh = lx_q[:, None] - lx_k[None, :] + WW - 1"),
        ("jw = lx_q[:, None] - lx_k[None, :] + WW - 1", "jw = ly_q[:, None] - ly_k[None, :] + WH - 1")), "attention forward"),
    Plant("rel-pos h and w swapped", "cuda", CUDA_WA, _e(
        ("grow * p.Rh + (yq - yk + p.wh - 1)", "grow * p.Rh + (xq - xk + p.ww - 1)"),
        ("grow * p.Rw + (xq - xk + p.ww - 1)", "grow * p.Rw + (yq - yk + p.wh - 1)")), "attention forward"),
    # ---- dq without its relative-position term
    Plant("dq missing its rel-pos term", "reference", REF_WA, _e(
        ("q = q_cells.reshape(B, H, nc, wh, ww, D)", "q = q_cells.detach().reshape(B, H, nc, wh, ww, D)")),
          "attention"),
    Plant("dq missing its rel-pos term", "triton", TRI_WA, _e(
        ("dq += _rel_dq(DRELH,", "dq += 0.0 * _rel_dq(DRELH,"), ("dq += _rel_dq(DRELW,", "dq += 0.0 * _rel_dq(DRELW,")),
          "attention"),
    Plant("dq missing its rel-pos term", "cuda", CUDA_WA_PY, _e(
        ("dq = torch.matmul(g, rel.float()).to(qg.dtype) if ctx.needs_input_grad[0] else None", "dq = None")),
          "attention"),
    # ---- a missing __syncthreads (CUDA only: Triton and PyTorch have no explicit barriers to lose)
    Plant("missing __syncthreads", "cuda", CUDA_WA, _e(
        ("    if (bias_tile) {  // uniform over the CTA\n      __syncthreads();",
         "    if (bias_tile) {  // uniform over the CTA")), "attention",
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
]

OP_OF_CHECK = {"attention forward": "window_attention", "attention": "window_attention",
               "decode": "decode_heatmaps", "targets": "udp_targets"}
CAUGHT: list[str] = []  # printed at the end of the session by tests/conftest.py


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


def _mutant_opt(plant: Plant) -> tuple:
    """The file that differs is compiled at -O0 (a third of -O1's time; the CI shapes are tiny),
    everything else is the shared -O1 build of the real kernels."""
    return ((Path(plant.file).name, "-O0"),)


@pytest.fixture(scope="module")
def mutant_trees(tmp_path_factory):
    """Every csrc/ plant's mutant tree, built up front in parallel (one compile each of the file
    that differs; the rest is shared and cached)."""
    if cuda_emulator.skip_reason():
        return {}
    root = tmp_path_factory.mktemp("mutants")
    trees = {}
    for plant in PLANTS:
        if plant.file.startswith("csrc/"):
            tree = root / _tag(plant) / "csrc"
            shutil.copytree(REPO / "csrc", tree)
            (tree / Path(plant.file).name).write_text(mutated_source(plant))
            trees[plant] = tree
    cuda_emulator.build()  # the shared objects, once
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda p: cuda_emulator.build(csrc=trees[p], file_opt=dict(_mutant_opt(p))), trees))
    return trees


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


@pytest.mark.parametrize("plant", PLANTS, ids=_id)
def test_harness_catches_planted_defect(plant, mutant_trees, monkeypatch):
    _skip_unless_runs(plant)
    text = mutated_source(plant)
    for var, value in plant.env:
        monkeypatch.setenv(var, value)
    check = CHECKS[plant.check]
    with pytest.raises(AssertionError) as caught:
        if plant.file.startswith("csrc/"):
            with cuda_emulator.emulated(csrc=mutant_trees[plant], file_opt=_mutant_opt(plant)):
                check(plant.backend, None)
        else:
            module, fn = load_python_mutant(plant, text, _tag(plant))
            if plant.backend == "cuda":
                with cuda_emulator.emulated():
                    cuda_emulator.register_cpu_kernels(module)
                    check(plant.backend, fn)
            else:
                check(plant.backend, fn)
    first = str(caught.value).strip().splitlines()[0][:160]
    CAUGHT.append(f"caught  {plant.mutation:40s} [{plant.backend:9s}] {first}")


def test_every_defect_is_planted_in_every_backend():
    """The table covers each defect in each backend that can have it."""
    by_defect = {}
    for p in PLANTS:
        by_defect.setdefault(p.mutation, set()).add(p.backend)
    cuda_only = {"missing __syncthreads"}
    for mutation, backends in by_defect.items():
        want = {"cuda"} if mutation in cuda_only else {"reference", "triton", "cuda"}
        assert backends == want, f"{mutation}: planted in {sorted(backends)}, expected {sorted(want)}"
    assert len(by_defect) == 11


def test_unmutated_copies_pass():
    """The machinery itself: an unmodified copy of a Python backend, run the same way, passes."""
    plant = Plant("none", "triton", TRI_UT, (), "targets")
    _skip_unless_runs(plant)
    _, fn = load_python_mutant(plant, (REPO / plant.file).read_text(), "clean")
    CHECKS["targets"]("triton", fn)
