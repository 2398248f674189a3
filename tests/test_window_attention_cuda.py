"""The cuda backend of window_attention (csrc/window_attention.cu).

GPU tests (skipped with the reason elsewhere): the issue's sweep and a seeded random sweep of 500
fp16/bf16 configs against the float64 reference through the shared harness (outputs NaN-poisoned),
bit-identical reruns, strided/misaligned inputs, torch.compile and opcheck. CPU tests: the
extension exposes the binding, a forced cuda backend on CPU tensors raises NotImplementedError
with its reasons, and the custom ops' fake + autograd registrations run end to end on meta tensors.
"""
from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

import parity
import sanitizer
import vitpose_kernels as vk
from vitpose_kernels import _ext, _validate

LOW = (torch.bfloat16, torch.float16)


def _cuda_skip_reason() -> str | None:
    return parity.skip_reason("window_attention", "cuda")


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def _require_cuda_backend():
    why = _cuda_skip_reason()
    if why:
        pytest.skip(f"cuda backend of window_attention unavailable here: {why}")


def _low_precision(case: parity.AttentionCase, i: int) -> parity.AttentionCase:
    """The kernel declines fp32 (Triton serves it): run such cases in fp16/bf16 instead."""
    return case if case.dtype in LOW else dataclasses.replace(case, dtype=LOW[i % 2])


def _module():
    return importlib.import_module("vitpose_kernels.cuda_backend.window_attention")


# ----------------------------------------------------------------------------- GPU: parity
# Collected only where a GPU is (600 skips would drown the summary line; test_gpu_sweeps_owed
# says what a GPU adds, and tests/test_cuda_emulated.py runs the kernels on the CPU meanwhile).
ON_GPU = torch.cuda.is_available()
SWEEP = [_low_precision(c, i) for i, c in enumerate(parity.attention_sweep("gpu"))] if ON_GPU else []
RANDOM = [_low_precision(c, i) for i, c in enumerate(parity.random_attention_cases(500, seed=6, small=False))
          ] if ON_GPU else []


def test_gpu_sweeps_owed():
    if not ON_GPU:
        pytest.skip(f"not collected here: the GPU sweep ({len(parity.attention_sweep('gpu'))} cases) and the "
                    "500-case random sweep of the cuda backend need a CUDA GPU")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", SWEEP, ids=str)
def test_sweep(case):
    _require_cuda_backend()
    parity.check_window_attention("cuda", case)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", RANDOM, ids=str)
def test_random_sweep(case):
    _require_cuda_backend()
    parity.check_window_attention("cuda", case)


# Shapes that stress the decomposition: cells larger than one 64-row block (full attention over
# 768 and 3072 tokens), more pooled tokens than one key block, 80 padded to 96, one-token cells.
EDGE = [
    parity.AttentionCase(grid=(32, 24), window=None, num_global=17, rel_pos=True, D=64, dtype=torch.bfloat16),
    parity.AttentionCase(grid=(64, 48), window=None, D=32, dtype=torch.float16, B=1, H=1),
    parity.AttentionCase(grid=(64, 48), window=(4, 3), shift=(2, 1), pool=True, num_global=1, rel_pos=True,
                         D=80, dtype=torch.bfloat16, H=2),
    parity.AttentionCase(grid=(9, 11), window=(1, 1), pool=True, num_global=2, rel_pos=True, D=128,
                         dtype=torch.float16),
    parity.AttentionCase(grid=(5, 7), window=(9, 9), shift=(4, 8), pool=True, num_global=70, D=96,
                         dtype=torch.bfloat16, packed=False),
]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", EDGE, ids=str)
def test_edge_shapes(case):
    _require_cuda_backend()
    parity.check_window_attention("cuda", case)


def _run(case: parity.AttentionCase, inputs):
    q, k, v, rh, rw, grad = inputs
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (q, k, v, rh, rw)]
    out = vk.window_attention(*leaves[:3], grid=case.grid, window=case.window, shift=case.shift, pool=case.pool,
                              num_global=case.num_global, rel_pos_h=leaves[3], rel_pos_w=leaves[4], backend="cuda")
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves if t is not None]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", [
    parity.AttentionCase(grid=(32, 24), window=(8, 8), shift=(4, 4), pool=True, num_global=1, rel_pos=True, B=2,
                         H=4, D=64, dtype=torch.bfloat16),
    parity.AttentionCase(grid=(16, 12), window=None, num_global=17, B=2, H=3, D=80, dtype=torch.float16),
    parity.AttentionCase(grid=(64, 48), window=(7, 7), shift=(3, 3), pool=True, rel_pos=True, B=1, H=2, D=128,
                         dtype=torch.bfloat16),
], ids=str)
def test_bit_identical_reruns(case):
    """Deterministic backward (no atomics): two runs agree bit for bit, outputs and gradients."""
    _require_cuda_backend()
    inputs = parity.attention_inputs(case, torch.device("cuda"))
    first, second = _run(case, inputs), _run(case, inputs)
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"{case}: result {i} differs between two identical runs"


@gpu
@pytest.mark.gpu
def test_strided_and_misaligned_inputs():
    """Views the kernel cannot read in place (odd offsets, non-contiguous head dim) are copied;
    non-contiguous output gradients are read through their strides."""
    _require_cuda_backend()
    B, H, hg, wg, D, G = 2, 3, 16, 12, 64, 1
    N = G + hg * wg
    base = torch.randn(B * H * N * D + 1, device="cuda", dtype=torch.bfloat16)
    q = base[1:].view(B, H, N, D)  # 2-byte offset: rows not 16-byte aligned
    k = torch.randn(B, H, D, N, device="cuda", dtype=torch.bfloat16).transpose(2, 3)  # head dim strided
    v = torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # (B, N, H, D) layout
    kw = dict(grid=(hg, wg), window=(8, 8), shift=(4, 4), pool=True, num_global=G)
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    ref_leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out = vk.window_attention(*leaves, backend="cuda", **kw)
    ref = vk.window_attention(*ref_leaves, backend="reference", **kw)
    parity.assert_close("out", out, ref, parity.TOL[torch.bfloat16]["fwd"])
    grad = torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    out.backward(grad)
    ref.backward(grad.double())
    for name, a, e in zip(("dq", "dk", "dv"), leaves, ref_leaves):
        parity.assert_close(name, a.grad, e.grad, parity.TOL[torch.bfloat16]["bwd"])


@gpu
@pytest.mark.gpu
def test_torch_compile_fullgraph_and_opcheck():
    _require_cuda_backend()
    mod = _module()
    case = parity.AttentionCase(grid=(16, 12), window=(8, 8), shift=(4, 4), pool=True, num_global=1, rel_pos=True,
                                B=2, H=2, D=64, dtype=torch.bfloat16)
    q, k, v, rh, rw, grad = parity.attention_inputs(case, torch.device("cuda"))
    kw = dict(grid=case.grid, window=case.window, shift=case.shift, pool=True, num_global=1, backend="cuda")

    def f(q, k, v, rh, rw):
        return vk.window_attention(q, k, v, rel_pos_h=rh, rel_pos_w=rw, **kw)

    eager = f(q, k, v, rh, rw)
    compiled = torch.compile(f, fullgraph=True)
    # Same kernels; only the small torch parts (pooling, q . rel_pos) may be fused differently.
    parity.assert_close("compiled", compiled(q, k, v, rh, rw), eager, 1e-2)

    hg, wg = case.grid
    kp, vp = (torch.randn(2, 2, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    qrh, qrw = (torch.randn(2, 2, hg * wg, 15, device="cuda") for _ in range(2))
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v, kp, vp, qrh, qrw)]
    args = (*leaves, [1, hg, wg, 8, 8, 4, 4], 64 ** -0.5)
    torch.library.opcheck(mod.window_attention_fwd, args)


# ----------------------------------------------------------------------------- CPU-runnable
def test_extension_exposes_binding():
    mod, why = _ext.load()
    if mod is None:
        pytest.skip(f"extension not built here: {why}")
    for name in ("window_attention_fwd", "window_attention_bwd"):
        assert hasattr(mod, name), f"vitpose_kernels._C lacks {name}; rebuild with pip install ."


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")
def test_forced_cuda_on_cpu_raises_with_reasons():
    q = torch.randn(1, 2, 64, 32, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="backend='cuda' cannot serve this call") as err:
        vk.window_attention(q, q, q, grid=(8, 8), window=(4, 4), backend="cuda")
    assert "cuda" in str(err.value).lower() and "  - " in str(err.value)


def test_reasons_name_what_is_unsupported():
    if _ext.load()[0] is None:
        pytest.skip("the cuda backend module is imported only when the extension is built")
    mod = _module()
    q32 = torch.randn(1, 1, 64, 32)
    spec = _validate.window_attention_spec(q32, q32, q32, grid=(8, 8), window=(4, 4), shift=0, pool=False,
                                           num_global=0, rel_pos_h=None, rel_pos_w=None, scale=None)
    why = " | ".join(mod._reasons(q32, q32, q32, None, None, spec))
    assert "triton" in why and "float32" in why
    q20 = torch.randn(1, 1, 64, 20, dtype=torch.float16)
    assert any("head dim" in r for r in mod._reasons(q20, q20, q20, None, None, spec))


@pytest.mark.parametrize("pool,G,rel", [(True, 1, True), (False, 0, False), (True, 17, False)])
def test_custom_ops_trace_on_meta(pool, G, rel):
    """register_fake and register_autograd wiring, forward and backward, without a GPU."""
    if _ext.load()[0] is None:
        pytest.skip("the cuda backend module is imported only when the extension is built")
    mod = _module()
    B, H, hg, wg, D = 2, 3, 7, 9, 80
    N = G + hg * wg
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.bfloat16, device="meta", requires_grad=True) for _ in range(3))
    rh = torch.randn(7, D, device="meta", requires_grad=True) if rel else None
    rw = torch.randn(5, D, device="meta", requires_grad=True) if rel else None
    spec = _validate.window_attention_spec(q, k, v, grid=(hg, wg), window=(4, 3), shift=(1, 2), pool=pool,
                                           num_global=G, rel_pos_h=rh, rel_pos_w=rw, scale=None)
    out = mod.window_attention(q, k, v, rh, rw, spec)
    assert out.shape == q.shape and out.dtype == q.dtype
    out.sum().backward()
    for t in (q, k, v, rh, rw):
        if t is not None:
            assert t.grad is not None and t.grad.shape == t.shape


# ----------------------------------------------------------------------------- compute-sanitizer
def small_sweep() -> None:
    """A few forward + backward launches covering every code path (run under compute-sanitizer)."""
    for case in [parity.AttentionCase(grid=(7, 9), window=(4, 3), shift=(2, 1), pool=True, num_global=1,
                                      rel_pos=True, D=64, dtype=torch.bfloat16),
                 parity.AttentionCase(grid=(5, 6), window=None, num_global=2, D=80, dtype=torch.float16),
                 parity.AttentionCase(grid=(9, 9), window=(8, 8), shift=(4, 4), pool=True, D=32,
                                      dtype=torch.float16, packed=False),
                 parity.AttentionCase(grid=(4, 3), window=(2, 2), D=128, dtype=torch.bfloat16)]:
        parity.check_window_attention("cuda", case)
    torch.cuda.synchronize()


@gpu
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_sanitizer_small_sweep(tool):
    _require_cuda_backend()
    extra = ["--racecheck-report", "hazard"] if tool == "racecheck" else []
    sanitizer.run_sweep(tool, "test_window_attention_cuda", extra=extra)
