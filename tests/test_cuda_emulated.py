"""The CUDA kernels of csrc/, run on the CPU through tests/cuda_emulator, against the reference.

No GPU needed: the real .cu sources are compiled with the host C++ compiler (inline PTX swapped
for the emulator's models of mma.sync, ldmatrix and cp.async) into a stand-in for
vitpose_kernels._C, and the real Python launchers of the cuda backend run on CPU tensors through
the shared parity harness (tests/parity.py), outputs NaN-poisoned. This checks the kernels'
logic (indexing, tiling, fragment layouts, masking, barriers, warp convergence, launch limits)
on every CI run; speed and timing-dependent races still need the GPU (test_*_cuda.py).
Skipped with the reason where no host C++ compiler or pybind11 is available.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import cuda_emulator
import parity
import vitpose_kernels as vk

_WHY = cuda_emulator.skip_reason()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"CUDA emulator unavailable: {_WHY}")

CPU = torch.device("cpu")
LOW = (torch.float16, torch.bfloat16)


@pytest.fixture
def emu():
    """The CUDA backends patched onto the emulated extension for the duration of one test (the
    library is built once, on first use, and cached under build/cuda_emulator)."""
    with cuda_emulator.emulated() as mod:
        yield mod


def test_emulator_selftest(emu):
    """The emulator's PTX models reproduce plain matrix products when fragments are addressed as
    the PTX ISA tables say; cp.async lands at wait_group; divergence and exited lanes are caught."""
    assert cuda_emulator.selftest() == ""


def test_extension_surface_matches(emu):
    """The emulated module is built from the real bindings: same functions as the real _C."""
    names = {n for n in dir(emu) if not n.startswith("_")}
    assert {"window_attention_fwd", "window_attention_bwd", "window_attention_workspace", "window_attention_smem",
            "simple_decoder_forward", "simple_decoder_backward",
            "decode_heatmaps", "udp_targets", "build_info", "device_status"} <= names
    assert emu.build_info()["archs"] == "cpu-emulation"


# ----------------------------------------------------------------------------- window_attention
def _low(case: parity.AttentionCase, i: int) -> parity.AttentionCase:
    """The CUDA kernel declines fp32 (Triton serves it): run such cases in fp16 / bf16."""
    return case if case.dtype in LOW else dataclasses.replace(case, dtype=LOW[i % 2])


# The whole CI sweep (every feature: full attention, windows with partial edge cells, shift,
# pooling, global tokens, relative position, unpacked strides, D 16/32/80), shapes that need more
# than one tile (a cell of 81 rows: two query blocks and two key tiles; 70 global tokens: two
# global query blocks and two key blocks; D 80 padded to 96), and seeded random configs of the
# GPU sweep's kind (head dims 32..128, fp16/bf16) on grids up to 16x16.
_RANDOM = [c for c in parity.random_attention_cases(400, seed=11, small=False)
           if max(c.grid) <= 16][:32]
ATTENTION = [_low(c, i) for i, c in enumerate(parity.attention_sweep("ci"))] + [
    parity.AttentionCase(grid=(9, 9), window=None, num_global=2, rel_pos=True, D=32, dtype=torch.bfloat16, H=1),
    parity.AttentionCase(grid=(5, 7), window=(9, 9), shift=(4, 6), pool=True, num_global=70, D=16,
                         dtype=torch.float16, H=1, packed=False),
    parity.AttentionCase(grid=(6, 5), window=(4, 4), shift=(2, 2), pool=True, num_global=1, rel_pos=True, D=80,
                         dtype=torch.bfloat16, H=1),
] + [_low(dataclasses.replace(c, H=min(c.H, 2)), i) for i, c in enumerate(_RANDOM)]

# Pooled windows with head dims 33..64 and no global tokens or rel-pos: one CTA keeps a whole head in
# shared memory (the head-resident kernels; the target shape's path). Each also runs streamed.
RESIDENT = [
    parity.AttentionCase(grid=(16, 12), window=(8, 8), shift=(4, 4), pool=True, D=64, dtype=torch.bfloat16, B=2, H=1),
    parity.AttentionCase(grid=(7, 9), window=(4, 3), shift=(2, 1), pool=True, D=48, dtype=torch.float16, packed=False),
    parity.AttentionCase(grid=(5, 6), window=(5, 6), pool=True, D=64, dtype=torch.bfloat16, H=1),
]


# Cases where the CUDA kernels miss the harness's bound: kernel defects to fix, not tolerances to
# loosen. Listed (strict xfail) so that CI stays green meanwhile and a fix shows up as XPASS; keys are
# the collected case ids (str(case), with the plan suffix alternate_plans may add), which
# test_known_defects_name_cases checks. None at present. (v1's entries, blamed on gradients rounded
# twice, went with the v2 kernels, which round every gradient once. The last one, dq of
# g4x6-w4x6-s23-pool-G1-rel-B1H2D16-bfloat16 at 1.14x the bound, was measured with row buckets
# ranked by RMS size; with the harness's row-noise ranking the case passes at 0.70 of the bound
# (at most 0.83 over seeds 0-29). The kernels' backward is the yardstick's precision model: fed the
# kernel's own output O for delta, the yardstick reproduces its dq in all but at most 1 of 800
# elements. The per-row differences come from O's bf16 rounding (delta = rowsum(dO * O) carries it
# into dS): the kernels round the online softmax's unnormalised P before P.V, the yardstick the
# normalised one; O differs in ~40 % of its elements and is closer to the truth (RMS 0.7-0.85x).)
KNOWN_DEFECTS: dict[str, str] = {}


def _with_known_defects(cases):
    known = KNOWN_DEFECTS
    return [pytest.param(c, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=known[str(c)]))
            if str(c) in known else c for c in cases]


def test_known_defects_name_cases():
    """A KNOWN_DEFECTS key that names no collected case marks nothing: the entry would sit there
    unnoticed (as one did once its case id gained a plan suffix)."""
    assert set(KNOWN_DEFECTS) <= {str(c) for c in ATTENTION}, sorted(set(KNOWN_DEFECTS) - {str(c) for c in ATTENTION})


@pytest.mark.parametrize("case", _with_known_defects(ATTENTION), ids=str)
def test_window_attention(emu, case):
    before = cuda_emulator.launch_count()
    parity.check_window_attention("cuda", case, CPU)
    assert cuda_emulator.launch_count() >= before + 2  # the forward and (at least) the backward's single pass ran


def _run_attention(case):
    q, k, v, rh, rw, grad = parity.attention_inputs(case, CPU)
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (q, k, v, rh, rw)]
    out = vk.window_attention(*leaves[:3], grid=case.grid, window=case.window, shift=case.shift, pool=case.pool,
                              num_global=case.num_global, rel_pos_h=leaves[3], rel_pos_w=leaves[4], backend="cuda")
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "streamed"])
@pytest.mark.parametrize("case", RESIDENT, ids=str)
def test_window_attention_head_resident(emu, monkeypatch, case, resident):
    """The same shapes through the head-resident kernels (one launch forward, one backward) and
    through the streamed ones (pool, forward, prep, reduce, tiles)."""
    monkeypatch.setenv("VITPOSE_CUDA_RESIDENT", "1" if resident else "0")
    before = cuda_emulator.launch_count()
    parity.check_window_attention("cuda", case, CPU)
    launches = cuda_emulator.launch_count() - before
    assert launches == 2 if resident else launches >= 5, launches


# Thread orders and cp.async timings under which a race-free kernel gives the same bits: warps in
# lockstep (the default) or one warp running ahead to the next barrier (serial), copies landing at
# the retiring wait (late: a missing wait reads stale data) or at issue (early: a missing barrier
# before a buffer is refilled lets the refill overwrite data other warps still read).
SCHEDULES = [("reverse", "late"), ("serial", "early"), ("serial-reverse", "late"), ("serial-reverse", "early")]


@pytest.mark.parametrize("case", [
    parity.AttentionCase(grid=(6, 5), window=(4, 4), shift=(2, 2), pool=True, num_global=1, rel_pos=True, D=32,
                         dtype=torch.bfloat16, H=1),
    parity.AttentionCase(grid=(9, 9), window=None, num_global=2, rel_pos=True, D=32, dtype=torch.float16, H=1),
    # tiles spanning warps (64-row blocks): the single pass's P, dS cross warps between its phases
    parity.AttentionCase(grid=(9, 8), window=(8, 8), shift=(4, 4), num_global=1, rel_pos=True, D=32,
                         dtype=torch.bfloat16, H=1),
    parity.AttentionCase(grid=(12, 10), window=(8, 8), shift=(4, 4), pool=True, D=64, dtype=torch.bfloat16, H=1),
], ids=str)
def test_window_attention_schedule_independent(emu, monkeypatch, case):
    """Results must not change by a bit with the thread order or the copy timing: a barrier
    missing between warps changes them (checked by breaking the kernel on purpose)."""
    first = _run_attention(case)
    for schedule, copies in SCHEDULES:
        monkeypatch.setenv("VPEMU_SCHEDULE", schedule)
        monkeypatch.setenv("VPEMU_CP_ASYNC", copies)
        again = _run_attention(case)
        for i, (a, b) in enumerate(zip(first, again)):
            assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), \
                f"result {i} changes with the thread order ({schedule}, cp.async {copies})"


def test_window_attention_strided_and_misaligned_inputs(emu):
    """Views the kernel cannot read in place are copied by the launcher; a (B, N, H, D)-strided
    output gradient is read through its strides (the GPU test of the same name, emulated)."""
    B, H, hg, wg, D, G = 2, 2, 6, 5, 32, 1
    N = G + hg * wg
    base = torch.randn(B * H * N * D + 1, dtype=torch.bfloat16)
    q = base[1:].view(B, H, N, D)  # 2-byte offset: rows not 16-byte aligned
    k = torch.randn(B, H, D, N, dtype=torch.bfloat16).transpose(2, 3)  # head dim strided
    v = torch.randn(B, N, H, D, dtype=torch.bfloat16).transpose(1, 2)  # (B, N, H, D) layout, read in place
    kw = dict(grid=(hg, wg), window=(4, 4), shift=(2, 2), pool=True, num_global=G)
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    ref_leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out = vk.window_attention(*leaves, backend="cuda", **kw)
    ref = vk.window_attention(*ref_leaves, backend="reference", **kw)
    parity.assert_close("out", out, ref, parity.TOL[torch.bfloat16]["fwd"])
    grad = torch.randn(B, N, H, D, dtype=torch.bfloat16).transpose(1, 2)
    out.backward(grad)
    ref.backward(grad.double())
    for name, a, e in zip(("dq", "dk", "dv"), leaves, ref_leaves):
        parity.assert_close(name, a.grad, e.grad, parity.TOL[torch.bfloat16]["bwd"])


@pytest.mark.parametrize("packed", [False, True], ids=["qkv", "packed"])
def test_window_attention_custom_op_opcheck(packed):
    """torch.library.opcheck of the shared op schema (vitpose_kernels._attention_ops) with the real
    CUDA kernels behind it (outputs unguarded: opcheck compares storage offsets)."""
    from vitpose_kernels.cuda_backend import window_attention as wa

    hg, wg, D = 6, 5, 32
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 1 + hg * wg, 3, 2, D, generator=g).bfloat16()
    rh, rw = (torch.randn(7, D, generator=g).bfloat16() * 0.3 for _ in range(2))
    if packed:
        args = (qkv.requires_grad_(True), None, None)
    else:
        args = tuple(t.contiguous().requires_grad_(True) for t in qkv.permute(2, 0, 3, 1, 4).unbind(0))
    with cuda_emulator.emulated(guard_outputs=False):
        torch.library.opcheck(wa.window_attention_op, (*args, rh.requires_grad_(True), rw.requires_grad_(True),
                                                       [hg, wg, 4, 4, 2, 2, 1], True, D ** -0.5),
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ----------------------------------------------------------------------------- heads
@pytest.mark.parametrize("case", parity.decoder_sweep("ci") + [parity.DecoderCase(dtype=torch.bfloat16, K=3),
                                                               parity.DecoderCase(scale=3, hw=(5, 6), K=4)], ids=str)
def test_simple_decoder(emu, case):
    parity.check_simple_decoder("cuda", case, CPU)


@pytest.mark.parametrize("case", parity.heatmap_sweep("ci") + [
    parity.HeatmapCase(size=(64, 48), B=1, K=3, flip=True, boxes=True, border=True),
    parity.HeatmapCase(size=(3, 17), B=1, K=9, flip=True, boxes=True, method="argmax")], ids=str)
def test_decode_heatmaps(emu, case):
    parity.check_decode_heatmaps("cuda", case, CPU)


def test_decode_heatmaps_schedule_independent(emu, monkeypatch):
    """decode_heatmaps stages maps in shared memory between barriers and reduces across warps:
    the same bits under every thread order (a removed barrier changes them)."""
    case = parity.HeatmapCase(size=(40, 30), B=2, K=5, flip=True, boxes=True, border=True)
    hm, kw = parity.heatmap_inputs(case, CPU)
    first = vk.decode_heatmaps(hm, backend="cuda", **kw)
    for schedule, copies in SCHEDULES:
        monkeypatch.setenv("VPEMU_SCHEDULE", schedule)
        again = vk.decode_heatmaps(hm, backend="cuda", **kw)
        for a, b in zip(first, again):
            assert torch.equal(a, b), f"decode_heatmaps changes with the thread order ({schedule})"


@pytest.mark.parametrize("case", parity.target_sweep("ci"), ids=str)
def test_udp_targets(emu, case):
    parity.check_udp_targets("cuda", case, CPU)


def test_forced_cuda_on_cpu_still_refused_outside_the_emulator():
    """emulated() leaves nothing behind: outside it a forced cuda backend on CPU tensors is refused."""
    q = torch.randn(1, 1, 4, 16, dtype=torch.float16)
    with pytest.raises(NotImplementedError):
        vk.window_attention(q, q, q, grid=(2, 2), backend="cuda")
    assert os.environ.get("VPEMU_SCHEDULE") is None and os.environ.get("VPEMU_CP_ASYNC") is None
