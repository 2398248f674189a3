"""Triton-specific checks of window_attention (parity with the reference is tests/test_parity.py):
determinism, the torch.library registration (opcheck, torch.compile, fake tensors), what is
saved for backward, what is allocated, the support predicate, odd strides; GPU-only checks
(CUDA graphs, autotuning, ViTPose-sized shapes) skip with the reason on machines without one.

Shapes are tiny: on the CPU every kernel runs through TRITON_INTERPRET=1.
"""
import os

import pytest
import torch

import parity
import triton_compile
import vitpose_kernels as vk
from vitpose_kernels import _alloc, dispatch

pytestmark = pytest.mark.skipif(parity.skip_reason("window_attention", "triton") is not None,
                                reason=f"triton unavailable: {parity.skip_reason('window_attention', 'triton')}")

wa = pytest.importorskip("vitpose_kernels.triton_backend.window_attention")
DEV = parity.device()
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU-only check, owed)")

# Everything at once: shifted partial cells, pooled tiles, global tokens, relative position.
FULL_CASE = parity.AttentionCase(grid=(5, 6), window=(2, 4), shift=(1, 2), pool=True, num_global=2,
                                 rel_pos=True, B=1, H=2, D=16)


def _inputs(case, requires_grad=True):
    q, k, v, rh, rw, grad = parity.attention_inputs(case, DEV)
    leaves = [t.detach().clone().requires_grad_(requires_grad) if t is not None else None
              for t in (q, k, v, rh, rw)]
    return leaves, grad


def _kwargs(case):
    return dict(grid=case.grid, window=case.window, shift=case.shift, pool=case.pool,
                num_global=case.num_global)


def _run(case, leaves, grad):
    q, k, v, rh, rw = leaves
    out = vk.window_attention(q, k, v, rel_pos_h=rh, rel_pos_w=rw, backend="triton", **_kwargs(case))
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad)
    return [out.detach(), *grads]


def test_two_runs_are_bit_identical():
    leaves, grad = _inputs(FULL_CASE)
    first, second = _run(FULL_CASE, leaves, grad), _run(FULL_CASE, leaves, grad)
    for name, a, b in zip(("out", "dq", "dk", "dv", "drel_pos_h", "drel_pos_w"), first, second):
        assert torch.equal(a, b), f"{name} differs between two identical runs (race or atomics?)"


def test_odd_strides_and_broadcast_grad():
    """q/k/v with stride(-1) != 1 (a (B, H, D, N) buffer transposed) and a stride-0 upstream
    gradient (out.sum()): the kernels index everything through strides, nothing is copied."""
    case = parity.AttentionCase(grid=(3, 5), window=(2, 2), shift=(1, 1), pool=True, num_global=1,
                                B=2, H=1, D=16)
    N = case.num_global + 15
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(2, 1, 16, N, generator=g).to(DEV) for _ in range(3)]
    leaves = [b.transpose(-1, -2).detach().requires_grad_(True) for b in base]
    assert leaves[0].stride(-1) != 1
    out = vk.window_attention(*leaves, backend="triton", **_kwargs(case))
    out.sum().backward()
    ref_in = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = vk.window_attention(*ref_in, backend="reference", **_kwargs(case))
    ref.sum().backward()
    parity.assert_close("out", out, ref, 1e-4)
    for name, a, e in zip(("dq", "dk", "dv"), leaves, ref_in):
        parity.assert_close(name, a.grad, e.grad, 1e-4)


def test_saved_tensors_are_q_k_v_out_lse_and_the_pooled_keys():
    case = parity.AttentionCase(grid=(4, 4), window=(2, 2), shift=(1, 1), pool=True, num_global=1,
                                B=1, H=1, D=16)
    (q, k, v, _, _), _ = _inputs(case)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = vk.window_attention(q, k, v, backend="triton", **_kwargs(case))
    B, H, N, D = q.shape
    allowed = {(q.data_ptr(), q.shape), (k.data_ptr(), k.shape), (v.data_ptr(), v.shape),
               (out.data_ptr(), out.shape)}
    others = sorted((tuple(t.shape) for t in saved if (t.data_ptr(), t.shape) not in allowed), key=len)
    # The natural-log logsumexp per row, and the extra keys/values every grid query sees: the 4
    # pooled tile means and the global token (small: 2 * (P + G) rows, not N).
    assert others == [(B, H, N), (2, B, H, 4 + 1, D)], f"saved beyond q, k, v, out: {others}"


def test_no_quadratic_buffers(monkeypatch):
    """Every buffer the backend allocates (forward and backward) is at most the size of q: nothing
    N x N or cells x cell_size^2 (here N*N = 16x and cells*S^2 = 4x the size of q)."""
    case = parity.AttentionCase(grid=(8, 8), window=(4, 4), shift=(2, 2), pool=True, num_global=1,
                                rel_pos=True, B=1, H=1, D=16)
    leaves, grad = _inputs(case)
    sizes = []
    real_empty = _alloc.empty

    def spy(*shape, dtype, device):
        sizes.append(tuple(shape))
        return real_empty(*shape, dtype=dtype, device=device)

    monkeypatch.setattr(_alloc, "empty", spy)
    _run(case, leaves, grad)
    assert sizes, "the backend did not allocate through _alloc.empty"
    limit = leaves[0].numel()
    big = [s for s in sizes if torch.Size(s).numel() > limit]
    assert not big, f"buffers larger than q ({limit} elements): {big}"


@pytest.mark.parametrize("packed", [False, True], ids=["qkv", "packed"])
@pytest.mark.parametrize("rel", [False, True], ids=["plain", "rel_pos"])
def test_opcheck(rel, packed):
    """The shared schema (vitpose_kernels._attention_ops) with the Triton kernels behind it."""
    case = parity.AttentionCase(grid=(2, 3), window=(2, 2), shift=(1, 1), pool=True, num_global=1,
                                rel_pos=rel, B=1, H=1, D=16)
    (q, k, v, rh, rw), _ = _inputs(case)
    geom = [*case.grid, *case.window, *case.shift, case.num_global]
    if packed:  # one (B, N, 3, H, D) tensor, k = v = None
        args = (torch.stack([q, k, v], 2).transpose(1, 3).detach().requires_grad_(), None, None)
    else:
        args = (q, k, v)
    torch.library.opcheck(wa.window_attention_op, (*args, rh, rw, geom, True, 0.25))


def test_torch_compile_fullgraph_no_recompiles():
    case = parity.AttentionCase(grid=(3, 4), window=(2, 2), shift=(1, 1), pool=True, num_global=1,
                                rel_pos=True, B=1, H=1, D=16)
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")  # traces fake + autograd; no C++ compile

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rel_pos_h = torch.nn.Parameter(torch.randn(3, 16) * 0.3)
            self.rel_pos_w = torch.nn.Parameter(torch.randn(3, 16) * 0.3)

        def forward(self, qkv):  # qkv (B, N, 3, H, D), used without copies
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            out = vk.window_attention(q, k, v, rel_pos_h=self.rel_pos_h, rel_pos_w=self.rel_pos_w,
                                      backend="triton", **_kwargs(case))
            return out * 2

    torch._dynamo.reset()
    block = Block().to(DEV)
    compiled = torch.compile(block, fullgraph=True, backend=counter)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        qkv = torch.randn(1, 13, 3, 1, 16, generator=g).to(DEV).requires_grad_(True)
        out = compiled(qkv)
        out.sum().backward()
        ref = block(qkv.detach())
        parity.assert_close("compiled out", out, ref, 1e-5)
    assert counter.frame_count == 1, f"{counter.frame_count} compilations for two calls of the same shape"


def test_reasons():
    case = parity.AttentionCase(grid=(2, 2), window=None, B=1, H=1, D=16)
    (q, k, v, _, _), _ = _inputs(case, requires_grad=False)
    with pytest.raises(NotImplementedError, match="float64"):
        vk.window_attention(q.double(), k.double(), v.double(), grid=(2, 2), backend="triton")
    wide = torch.zeros(1, 1, 4, wa.MAX_HEAD_DIM + 8, device=DEV)
    with pytest.raises(NotImplementedError, match="head dim"):
        vk.window_attention(wide, wide, wide, grid=(2, 2), backend="triton")
    spec = vk._validate.window_attention_spec(q.cpu(), k.cpu(), v.cpu(), grid=(2, 2), window=None,
                                              shift=(0, 0), pool=False, num_global=0, rel_pos_h=None,
                                              rel_pos_w=None, scale=None)
    real = dispatch.interpreting
    try:
        dispatch.interpreting = lambda: False
        why = wa.window_attention_reasons(q.cpu(), k.cpu(), v.cpu(), None, None, spec)
    finally:
        dispatch.interpreting = real
    assert any("TRITON_INTERPRET" in w for w in why), why
    # Head dims that are not powers of two are padded and masked, not declined.
    assert wa.window_attention_reasons(*(torch.zeros(1, 1, 4, 80, device=DEV),) * 3, None, None, spec) == []


def test_packed_qkv_backward_writes_one_gradient_without_stack_or_copy(monkeypatch):
    """window_attention_qkvpacked: the backward hands autograd one (B, N, 3, H, D) gradient that
    the kernels wrote in place: no stack / cat / clone / copy of q-sized tensors (a dispatch mode
    sees every aten op of the backward's host side; the launches are stubbed for that part, since
    the interpreter itself copies tensors), and the values equal the unpacked call's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from vitpose_kernels.triton_backend.window_attention import host

    case = FULL_CASE
    g = torch.Generator().manual_seed(1)
    N = case.num_global + case.grid[0] * case.grid[1]
    qkv = torch.randn(case.B, N, 3, case.H, case.D, generator=g).to(DEV).requires_grad_(True)
    dout = torch.randn(case.B, case.H, N, case.D, generator=g).to(DEV)
    kw = _kwargs(case)
    out = vk.window_attention_qkvpacked(qkv, backend="triton", **kw)
    (grad,) = torch.autograd.grad(out, qkv, dout)

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.big = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            res = func(*args, **(kwargs or {}))
            outs = res if isinstance(res, (tuple, list)) else [res]
            if any(isinstance(t, torch.Tensor) and t.numel() >= qkv.numel() // 3 for t in outs):
                self.big.append(func.__name__)
            return res

    with monkeypatch.context() as m:
        m.setattr(host, "_launch", lambda *a, **k: None)
        stubbed = vk.window_attention_qkvpacked(qkv, backend="triton", **kw)
        with Ops() as ops:
            (stub_grad,) = torch.autograd.grad(stubbed, qkv, dout)
    assert grad.shape == qkv.shape and stub_grad.shape == qkv.shape
    moved = [f for f in ops.big if not f.startswith(("empty", "new_empty", "select", "permute", "unbind",
                                                     "transpose", "as_strided", "view", "detach", "alias"))]
    assert not moved, f"q-sized tensors built in the packed backward beyond allocations and views: {moved}"
    q, k, v = (t.detach().clone().requires_grad_(True) for t in qkv.detach().permute(2, 0, 3, 1, 4).unbind(0))
    ref = vk.window_attention(q, k, v, backend="triton", **kw)
    torch.autograd.backward(ref, dout)
    assert torch.equal(out, ref)
    for i, t in enumerate((q, k, v)):
        assert torch.equal(grad[:, :, i].transpose(1, 2), t.grad), f"packed gradient {i} differs"


def test_launch_plan_is_cached_per_shape(monkeypatch):
    """A second call of the same shape builds no plan: the host side is a lookup, allocations and
    the launches (benchmarks/host_overhead.py times it with the launches stubbed)."""
    from vitpose_kernels.triton_backend.window_attention import host

    launches = []
    monkeypatch.setattr(host, "_launch", lambda kernel, grid, *a, **k: launches.append(kernel.fn.__name__))
    built = []
    real_init = host.Plan.__init__
    monkeypatch.setattr(host.Plan, "__init__", lambda self, *a: built.append(a) or real_init(self, *a))
    host._plan.cache_clear()
    call = (1, 2, (4, 6), (2, 3), (1, 1), True, 1, True, 16, "float32")
    host.dry_run(*call)
    host.dry_run(*call)
    assert len(built) == 1, built
    assert launches[:len(launches) // 2] == launches[len(launches) // 2:]
    assert launches[:len(launches) // 2] == ["extra_kv_kernel", "fwd_grid_kernel", "fwd_global_kernel",
                                             "bwd_prep_kernel", "bwd_global_kernel", "bwd_reduce_kernel",
                                             "bwd_tile_kernel"]


def test_launch_plan_kind_per_shape_class():
    """One program per (batch, head) where pooled keys tie a head's tiles together and B*H fills
    2 waves of 132 SMs (at the target shape class, whose looped single pass fits the registers);
    the split plan otherwise (batch-1 inference, no pooling, rel-pos, global tokens, fp32). A
    forced plan that cannot serve the call is a ValueError."""
    from vitpose_kernels._attention_ops import forced_plan
    from vitpose_kernels.triton_backend.window_attention import host

    def kind(B, H=12, D=64, dtype=torch.bfloat16, G=0, pool=True, rel=False, window=(8, 8)):
        geom = [32, 24, *window, 4, 4, G]
        return host.plan_of(B, H, G + 768, D, dtype, geom, pool, rel, rel).kind

    assert (kind(64), kind(22), kind(21), kind(1)) == ("head", "head", "split", "split")  # 22 * 12 = 264
    assert {kind(64, pool=False), kind(64, rel=True), kind(64, G=1), kind(64, dtype=torch.float32),
            kind(64, D=128), kind(64, window=(16, 12))} == {"split"}
    with forced_plan("head"):
        assert kind(1) == kind(1, rel=True, G=3, dtype=torch.float32) == "head"
        with pytest.raises(ValueError, match="per-head plan"):
            kind(1, pool=False)
    with forced_plan("split"):
        assert kind(64) == "split"


def test_host_overhead_benchmark_smoke():
    """benchmarks/host_overhead.py runs and reports (the figures are measured there, not judged
    here: a loaded CI machine would make any absolute bound flaky). The bound below only catches
    a pathological regression (e.g. a plan rebuilt or a kernel compiled per call): 400x the
    machine's own calibration loop, ~1 ms on an idle core."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
    import host_overhead

    r = host_overhead.measure(iters=5, repeats=3, H=2)
    assert r["launches_per_step"] == 5  # target case: extra keys, grid fwd, prep, reduce, tile
    for key in ("forward_us", "backward_us"):
        assert 0 < r[key] < 400 * r["calibration_us"], r


# ----------------------------------------------------------------------------- GPU only (owed here)
@needs_gpu
def test_cuda_graph_capture():
    case = parity.AttentionCase(grid=(16, 12), window=(8, 8), shift=(4, 4), pool=True, num_global=1,
                                rel_pos=True, B=2, H=4, D=64, dtype=torch.bfloat16)
    leaves, grad = _inputs(case)
    eager = _run(case, leaves, grad)  # warm-up also finishes any autotuning before capture
    static = [torch.empty_like(t) for t in eager]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        _run(case, leaves, grad)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        res = _run(case, leaves, grad)
        for dst, src in zip(static, res):
            dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, static):
        assert torch.equal(a, b)


@needs_gpu
@pytest.mark.parametrize("window,shift,pool,plan", [(None, (0, 0), False, None), ((8, 8), (4, 4), True, "split"),
                                                    ((8, 8), (4, 4), True, "head")])
def test_vitpose_b_eighth_features(window, shift, pool, plan):
    """The benchmark's shapes (ViTPose-B at 1/8 features), bf16, against the reference; the pooled
    case with both launch plans (batch 64 takes the per-head plan by itself)."""
    case = parity.AttentionCase(grid=(32, 24), window=window, shift=shift, pool=pool, num_global=0,
                                B=8, H=12, D=64, dtype=torch.bfloat16, plan=plan)
    parity.check_window_attention("triton", case)


@needs_gpu
def test_inductor_compile():
    if os.environ.get("VITPOSE_SKIP_INDUCTOR") == "1":
        pytest.skip("VITPOSE_SKIP_INDUCTOR=1")
    case = parity.AttentionCase(grid=(16, 12), window=(8, 8), shift=(4, 4), pool=True, B=2, H=4, D=64,
                                dtype=torch.bfloat16)
    leaves, grad = _inputs(case)

    def f(q, k, v):
        return vk.window_attention(q, k, v, backend="triton", **_kwargs(case)) + 1

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(*leaves[:3])
    out.backward(grad)
    parity.assert_close("inductor out", out, f(*[t.detach() for t in leaves[:3]]), 2e-2)


# ----------------------------------------------------------------------------- compiled (no GPU)
# Calls whose every launch is compiled for sm_90a exactly as the launcher would specialize it on a
# GPU: the target case (Table 5 at 1/8 features, pooled and shifted) and one per other code path.
SM90_CALLS = [
    # B, H, grid, window, shift, pool, G, rel_pos, D, dtype[, plan]; strict: no spill, no serialized wgmma
    (4, 12, (32, 24), (8, 8), (4, 4), True, 0, False, 64, "bfloat16", True),  # split plan (B*H < 264)
    (4, 12, (32, 24), (8, 8), (4, 4), True, 0, False, 64, "bfloat16", "head", True),  # the target's plan
    (4, 12, (16, 12), (8, 8), (4, 4), True, 1, True, 64, "bfloat16", True),
    (2, 12, (32, 24), None, (0, 0), False, 0, False, 64, "bfloat16", True),
    (1, 2, (7, 9), (4, 3), (2, 1), True, 3, True, 32, "float32", False),
]
SM90_CALLS_SLOW = [  # the other shape classes: head dim 128, SAM's 14x14 windows with rel-pos
    (2, 4, (16, 12), (8, 8), (4, 4), True, 17, False, 128, "float16", False),
    (2, 3, (28, 28), (14, 14), (0, 0), False, 0, True, 64, "bfloat16", False),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels")
def test_launches_compile_for_sm90a():
    """Every launch of the calls above compiles for sm_90a (tests/triton_compile.py says why the
    interpreter alone is not enough); for the strict ones (the target case, rel-pos with a global
    token at D 64, full attention) ptxas reports no spill and no serialized wgmma (C7515)."""
    report = triton_compile.compile_launches_for_sm90a(
        "vitpose_kernels.triton_backend.window_attention.host", "dry_run", SM90_CALLS)
    assert {r["kernel"] for r in report} >= {"extra_kv_kernel", "fwd_grid_kernel", "fwd_global_kernel",
                                             "bwd_prep_kernel", "bwd_global_kernel", "bwd_reduce_kernel",
                                             "bwd_tile_kernel", "bwd_head_kernel", "bwd_kv_kernel",
                                             "bwd_q_kernel"}, report
    bad = [r for r in report if r["strict"] and (r["spill_bytes"] or r["serialized_wgmma"])]
    assert not bad, f"spills or serialized wgmma: {bad}"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels")
def test_launches_compile_for_sm90a_other_shape_classes():
    report = triton_compile.compile_launches_for_sm90a(
        "vitpose_kernels.triton_backend.window_attention.host", "dry_run", SM90_CALLS_SLOW)
    assert {r["kernel"] for r in report} >= {"bwd_tile_kernel", "bwd_kv_kernel", "bwd_q_kernel"}, report
