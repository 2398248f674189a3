"""The CUDA C++ backends of simple_decoder, decode_heatmaps and udp_targets (csrc/*.cu).

The shared parity harness (tests/test_parity.py) runs the sweeps; this file adds what is specific
to the CUDA backends: the binding, the error path, fake/autograd registrations, layouts the
launchers must honour (strided and channels-last inputs, expanded gradients, mixed dtypes),
determinism, torch.compile, and compute-sanitizer runs. Everything that launches a kernel runs on
a GPU, or else on the CPU through tests/cuda_emulator (the `cuda_dev` fixture); only the
compute-sanitizer runs need a real GPU.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import contextlib

import cuda_emulator
import parity
import sanitizer
import vitpose_kernels as vk
from vitpose_kernels import _alloc, _ext, dispatch

OPS = ("simple_decoder", "decode_heatmaps", "udp_targets")
BINDINGS = ("simple_decoder_forward", "simple_decoder_backward", "decode_heatmaps", "decode_heatmaps_smem_bytes",
            "udp_targets")
CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _ext_or_skip():
    mod, why = _ext.load()
    if mod is None:
        pytest.skip(f"no extension: {why}")
    return mod


def _gpu_reason() -> str | None:
    why = dispatch.machine_reasons("cuda")
    return "; ".join(why) if why else None


needs_gpu = pytest.mark.skipif(_gpu_reason() is not None, reason=f"CUDA backend cannot run here: {_gpu_reason()}")


@contextlib.contextmanager
def running_cuda(guard_outputs: bool = True):
    """The device the CUDA kernels run on: the GPU, or the CPU through the emulator (outputs
    canary-guarded unless guard_outputs=False, which opcheck needs)."""
    if _gpu_reason() is None:
        yield torch.device("cuda")
        return
    why = cuda_emulator.skip_reason()
    if why:
        pytest.skip(f"no GPU ({_gpu_reason()}) and no CUDA emulator ({why})")
    with cuda_emulator.emulated(guard_outputs=guard_outputs):
        yield torch.device("cpu")


@pytest.fixture
def cuda_dev():
    with running_cuda() as dev:
        yield dev


# ----------------------------------------------------------------------------- CPU-runnable
def test_bindings_exist():
    mod = _ext_or_skip()
    missing = [name for name in BINDINGS if not hasattr(mod, name)]
    if missing:
        sources = [CSRC / f"{op}{suffix}" for op in OPS for suffix in (".cu", "_binding.cpp")]
        if any(p.exists() and p.stat().st_mtime > Path(mod.__file__).stat().st_mtime for p in sources):
            pytest.skip(f"{mod.__file__} predates csrc/ (missing {missing}); rebuild with `pip install .`")
        raise AssertionError(f"vitpose_kernels._C lacks {missing}")
    assert mod.decode_heatmaps_max_taps >= 11
    # two 64x48 float buffers per map plus the reduction scratch
    assert mod.decode_heatmaps_smem_bytes(64, 48, 11, True) >= 2 * 64 * 48 * 4


def test_binding_rejects_bad_arguments_naming_the_op():
    mod = _ext_or_skip()
    if not hasattr(mod, "simple_decoder_forward"):
        pytest.skip("stale extension (see test_bindings_exist)")
    with pytest.raises(ValueError, match="vitpose_kernels.simple_decoder: ksize"):
        mod.simple_decoder_forward(0, [1, 1, 1, 1], 0, 0, 1, 1, 1, 1, 2, 4, 0, 0)
    with pytest.raises(ValueError, match="vitpose_kernels.decode_heatmaps: blur kernel"):
        mod.decode_heatmaps(0, [0] * 4, 0, [0] * 4, 0, 0, 0, 1, 1, 4, 4, [0.5, 0.5], 1, 16, 16, 0, [0, 0], 0,
                            [0, 0], 0, 0, 0)
    with pytest.raises(ValueError, match="vitpose_kernels.udp_targets: sizes"):
        mod.udp_targets(0, [0] * 3, 0, [0] * 2, 1, 1, 1, 4, 16, 16, 2.0, 0, 0, 0)


def test_launch_without_gpu_is_a_runtime_error_naming_the_op():
    mod = _ext_or_skip()
    if not hasattr(mod, "udp_targets"):
        pytest.skip("stale extension (see test_bindings_exist)")
    if mod.device_status()["count"] > 0:
        pytest.skip("checks the no-GPU launch failure (with a GPU these null pointers would fault)")
    with pytest.raises(RuntimeError, match=r"vitpose_kernels\.udp_targets: kernel launch failed"):
        mod.udp_targets(0, [2, 2, 1], 0, [1, 1], 1, 1, 4, 4, 16, 16, 2.0, 0, 0, 0)


def _cpu_calls():
    x, w = torch.randn(1, 4, 3, 2), torch.randn(5, 4, 3, 3)
    hm = torch.rand(2, 3, 8, 6)
    kp, vis = torch.rand(2, 3, 2) * 40, torch.ones(2, 3)
    return {
        "simple_decoder": lambda **kw: vk.simple_decoder(x, w, scale_factor=2, **kw),
        "decode_heatmaps": lambda **kw: vk.decode_heatmaps(hm, input_size=(24, 32), **kw),
        "udp_targets": lambda **kw: vk.udp_targets(kp, vis, heatmap_size=(6, 8), input_size=(24, 32), **kw),
    }


@pytest.mark.parametrize("op", OPS)
def test_forced_cuda_on_cpu_tensors_lists_reasons(op):
    with pytest.raises(NotImplementedError, match=rf"{op}: backend='cuda' cannot serve this call:\n  - "):
        _cpu_calls()[op](backend="cuda")


def test_reasons_on_cpu_tensors():
    from vitpose_kernels.cuda_backend import decode_heatmaps as dh, simple_decoder as sd, udp_targets as ut

    x = torch.randn(1, 4, 3, 2)
    assert any("CUDA device" in r for r in sd.reasons(x, torch.randn(5, 4, 3, 3), None, 4))
    assert any("CUDA device" in r for r in dh.reasons(torch.rand(1, 2, 4, 4), None, None, (8, 8), None, None,
                                                      "udp", 11))
    assert any("CUDA device" in r for r in ut.reasons(torch.rand(1, 2, 2, dtype=torch.float64),
                                                      torch.ones(1, 2, dtype=torch.bool), (4, 4), (8, 8), 2.0))


def test_fake_registrations_give_shapes():
    from vitpose_kernels.cuda_backend import decode_heatmaps as dh, simple_decoder as sd, udp_targets as ut

    m = dict(device="meta")
    x, w, b = torch.empty(2, 8, 7, 5, **m), torch.empty(17, 8, 3, 3, **m), torch.empty(17, **m)
    out = sd.simple_decoder_op(x, w, b, 4)
    assert out.shape == (2, 17, 28, 20) and out.dtype == x.dtype
    dx, dw, db = sd.simple_decoder_backward_op(torch.empty(2, 17, 28, 20, **m), x, w, 4)
    assert (dx.shape, dw.shape, db.shape) == (x.shape, w.shape, b.shape)
    kp, sc = dh.decode_heatmaps_op(torch.empty(3, 17, 64, 48, dtype=torch.float16, **m), None, None, [192, 256],
                                   None, None, "udp", 11)
    assert kp.shape == (3, 17, 2) and sc.shape == (3, 17) and kp.dtype == sc.dtype == torch.float32
    hm, wt = ut.udp_targets_op(torch.empty(3, 17, 2, **m), torch.empty(3, 17, **m), [48, 64], [192, 256], 2.0)
    assert hm.shape == (3, 17, 64, 48) and wt.shape == (3, 17)


@pytest.mark.parametrize("op", OPS)
def test_one_schema_per_op(op):
    """The Triton and CUDA ops of each head are made by one definition (vitpose_kernels._head_ops):
    same arguments, same order, same types, same returns."""
    import importlib

    schemas = {}
    for backend in ("triton", "cuda"):
        try:
            importlib.import_module(f"vitpose_kernels.{backend}_backend.{op}")
        except ImportError as e:
            pytest.skip(f"the {backend} backend does not import here: {e}")
        schema = getattr(torch.ops.vitpose_kernels, f"{op}_{backend}").default._schema
        schemas[backend] = str(schema).replace(f"{op}_{backend}", op)
    assert schemas["triton"] == schemas["cuda"], schemas


# ----------------------------------------------------------------------------- launches (GPU or emulator)
def _decoder_inputs(B, C, hw, K, k, dtype, dev, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, *hw, generator=g).to(dev, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = (torch.randn(K, C, k, k, generator=g) / C ** 0.5).to(dev, dtype)
    b = torch.randn(K, generator=g).to(dev, dtype)
    return x, w, b


@pytest.mark.parametrize("channels_last,expanded_grad", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_simple_decoder_layouts(cuda_dev, channels_last, expanded_grad, dtype):
    x, w, b = _decoder_inputs(2, 24, (7, 5), 17, 3, dtype, cuda_dev, channels_last=channels_last)
    ins = [t.detach().requires_grad_() for t in (x, w, b)]
    with _alloc.poisoned():
        out = vk.simple_decoder(*ins, scale_factor=3, backend="cuda")
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = vk.simple_decoder(*refs, scale_factor=3, backend="reference")
    tol = parity.TOL[dtype]
    parity.assert_close("out", out, ref, tol["fwd"])
    if expanded_grad:  # stride-0 gradient, as from out.sum().backward()
        grad = torch.ones(1, dtype=dtype, device=cuda_dev).expand(out.shape)
    else:
        grad = torch.randn(out.shape, device=cuda_dev, dtype=dtype).transpose(2, 3).contiguous().transpose(2, 3)
    with _alloc.poisoned():
        out.backward(grad)
    ref.backward(grad.double())
    for name, a, e in zip(("dx", "dweight", "dbias"), ins, refs):
        parity.assert_close(name, a.grad, e.grad, tol["bwd"])


@pytest.mark.parametrize("shape", [(1, 3, (1, 1), 2, 3, 5), (3, 17, (16, 12), 133, 3, 4), (2, 5, (2, 9), 3, 1, 7)])
def test_simple_decoder_shapes(cuda_dev, shape):
    B, C, hw, K, k, s = shape
    parity.check_simple_decoder("cuda", parity.DecoderCase(B=B, C=C, hw=hw, K=K, k=k, scale=s), cuda_dev)


def test_simple_decoder_deterministic_and_opcheck():
    from vitpose_kernels.cuda_backend import simple_decoder as sd

    with running_cuda(guard_outputs=False) as dev:
        x, w, b = _decoder_inputs(2, 16, (6, 4), 5, 3, torch.float32, dev)
        ins = [t.detach().requires_grad_() for t in (x, w, b)]
        runs = []
        for _ in range(2):
            out = vk.simple_decoder(*ins, backend="cuda")
            grads = torch.autograd.grad(out, ins, torch.ones_like(out))
            runs.append((out, *grads))
        for a, c in zip(*runs):
            assert torch.equal(a, c), "two runs differ: a race?"
        torch.library.opcheck(sd.simple_decoder_op, (ins[0], ins[1], ins[2], 4))
        torch.library.opcheck(sd.simple_decoder_op, (ins[0], ins[1], None, 2))


def test_simple_decoder_compiles_fullgraph(cuda_dev):
    """fullgraph capture of the custom op with its fake and autograd registrations (on the CPU
    emulator with aot_eager: inductor's CPU codegen adds minutes and nothing about the op)."""
    from vitpose_kernels.cuda_backend import simple_decoder as sd

    x, w, b = _decoder_inputs(2, 16, (6, 4), 5, 3, torch.bfloat16, cuda_dev)
    f = torch.compile(lambda x_, w_, b_: sd.simple_decoder_op(x_, w_, b_, 4).float().square().sum(), fullgraph=True,
                      backend="inductor" if cuda_dev.type == "cuda" else "aot_eager")
    ins = [t.detach().requires_grad_() for t in (x, w, b)]
    f(*ins).backward()
    refs = [t.detach().requires_grad_() for t in (x, w, b)]
    sd.simple_decoder_op(*refs, 4).float().square().sum().backward()
    for a, e in zip(ins, refs):
        torch.testing.assert_close(a.grad, e.grad)


# Full batches on a GPU, one instance through the emulator (same kernels, same code paths).
_B = 4 if torch.cuda.is_available() else 1


@pytest.mark.parametrize("case", [
    parity.HeatmapCase(B=_B, K=3 * _B, size=(128, 96), flip=True, boxes=True, border=True),
    parity.HeatmapCase(B=_B, K=133, size=(96, 72), flip=True, boxes=True, dtype=torch.bfloat16),
    parity.HeatmapCase(B=2, K=3, size=(2, 2)),
    parity.HeatmapCase(B=3, K=7, size=(5, 33), flip=True, border=True),
    parity.HeatmapCase(B=0),
], ids=str)
def test_decode_heatmaps_shapes(cuda_dev, case):
    parity.check_decode_heatmaps("cuda", case, cuda_dev)


@pytest.mark.parametrize("blur", [1, 3, 5, 7, 9, 13, 21])
def test_decode_heatmaps_blur_sizes(cuda_dev, blur):
    hm = parity.realistic_heatmaps(2, 5, 24, 18, seed=blur).to(cuda_dev)
    kp, sc = vk.decode_heatmaps(hm, input_size=(72, 96), blur_kernel_size=blur, backend="cuda")
    rkp, rsc = vk.decode_heatmaps(hm, input_size=(72, 96), blur_kernel_size=blur, backend="reference")
    assert torch.equal(sc, rsc)
    assert float((kp - rkp).abs().max()) <= 1e-3


def test_decode_heatmaps_strided_and_mixed_dtype(cuda_dev):
    big = parity.realistic_heatmaps(2, 34, 64, 50, seed=3).to(cuda_dev)
    hm = big[:, ::2, :, 1:49]  # strided channels, offset columns
    flip = parity.realistic_heatmaps(2, 17, 64, 48, seed=4).to(cuda_dev).half()  # widened to float32 with hm
    kw = dict(flip_heatmaps=flip, flip_indices=parity.COCO_FLIP_INDICES, input_size=(192, 256),
              bbox_centers=torch.rand(2, 2, device=cuda_dev, dtype=torch.float64) * 300,
              bbox_scales=(torch.rand(2, 2, device=cuda_dev) * 200 + 50).t().contiguous().t())
    for method in ("udp", "argmax"):
        with _alloc.poisoned():
            kp, sc = vk.decode_heatmaps(hm, method=method, backend="cuda", **kw)
        rkp, rsc = vk.decode_heatmaps(hm, method=method, backend="reference", **kw)
        assert torch.equal(sc, rsc)
        assert float((kp - rkp).abs().max()) <= 1e-3, method


def test_decode_heatmaps_first_index_on_ties(cuda_dev):
    hm = torch.rand(2, 5, 64, 48, device=cuda_dev) * 0.5
    hm[1, 3] = 0.25  # a plateau
    hm[1, 4, 5, 7] = hm[1, 4, 9, 2] = hm[1, 4, 40, 1] = 2.0  # three equal maxima
    kp, sc = vk.decode_heatmaps(hm, input_size=(47, 63), method="argmax", backend="cuda")
    rkp, rsc = vk.decode_heatmaps(hm, input_size=(47, 63), method="argmax", backend="reference")
    assert torch.equal(kp, rkp) and torch.equal(sc, rsc)
    assert kp[1, 3].tolist() == [0.0, 0.0]
    assert kp[1, 4].tolist() == [7.0, 5.0]  # crop size = map size - 1: pixels stay integers


def test_decode_heatmaps_deterministic(cuda_dev):
    hm = torch.rand(2, 17, 64, 48, device=cuda_dev)
    a = vk.decode_heatmaps(hm, backend="cuda")
    b = vk.decode_heatmaps(hm, backend="cuda")
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kp_dtype,vis_dtype", [(torch.float32, torch.float32), (torch.float64, torch.bool),
                                                (torch.float16, torch.int64)])
def test_udp_targets_dtypes(cuda_dev, kp_dtype, vis_dtype):
    g = torch.Generator().manual_seed(0)
    kp = (torch.rand(4, 17, 2, generator=g) * 250 - 30).to(kp_dtype)
    vis = (torch.rand(4, 17, generator=g) > 0.3).to(vis_dtype)
    kw = dict(heatmap_size=(48, 64), input_size=(192, 256), sigma=2.0)
    with _alloc.poisoned():
        hm, w = vk.udp_targets(kp.to(cuda_dev), vis.to(cuda_dev), backend="cuda", **kw)
    rhm, rw = vk.udp_targets(kp, vis, backend="reference", **kw)
    parity.assert_close("heatmaps", hm, rhm, 1e-5)
    assert torch.equal(w.cpu(), rw)


def test_udp_targets_empty_and_opcheck():
    from vitpose_kernels.cuda_backend import decode_heatmaps as dh, udp_targets as ut

    with running_cuda(guard_outputs=False) as dev:
        hm, w = vk.udp_targets(torch.empty(0, 17, 2, device=dev), torch.empty(0, 17, device=dev), backend="cuda")
        assert hm.shape == (0, 17, 64, 48) and w.shape == (0, 17)
        torch.library.opcheck(ut.udp_targets_op, (torch.rand(2, 3, 2, device=dev) * 100,
                                                  torch.ones(2, 3, device=dev), [12, 16], [48, 64], 2.0))
        torch.library.opcheck(dh.decode_heatmaps_op, (torch.rand(2, 3, 16, 12, device=dev), None, None, [48, 64],
                                                      None, None, "udp", 11))


# ----------------------------------------------------------------------------- compute-sanitizer
def small_sweep() -> None:
    """A few launches of every kernel (run under compute-sanitizer by the tests below)."""
    for case in [parity.DecoderCase(), parity.DecoderCase(k=1, scale=3, hw=(2, 3), dtype=torch.bfloat16),
                 parity.DecoderCase(hw=(4, 3), C=17, K=3, dtype=torch.float16)]:
        parity.check_simple_decoder("cuda", case)
    for case in [parity.HeatmapCase(B=2, flip=True, boxes=True), parity.HeatmapCase(B=1, K=5, size=(7, 5)),
                 parity.HeatmapCase(B=1, K=3, size=(64, 48), method="argmax", flip=True),
                 parity.HeatmapCase(B=1, K=2, size=(128, 96), dtype=torch.bfloat16)]:
        parity.check_decode_heatmaps("cuda", case)
    parity.check_udp_targets("cuda", parity.TargetCase())
    torch.cuda.synchronize()


@needs_gpu
def test_memcheck_small_sweep():
    sanitizer.run_sweep("memcheck", "test_heads_cuda", extra=["--kernel-name", "kns=vitpose"])


@needs_gpu
def test_racecheck_decode_heatmaps():
    # decode_heatmaps is the only kernel that shares memory between threads.
    sanitizer.run_sweep("racecheck", "test_heads_cuda",
                       extra=["--kernel-name", "kns=decode_heatmaps", "--racecheck-report", "hazard"])
