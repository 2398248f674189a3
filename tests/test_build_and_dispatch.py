"""The install: what was built, the backend report, and dispatch's choices and errors."""
import subprocess
import sys

import pytest
import torch

import vitpose_kernels as vk
from vitpose_kernels import _ext, dispatch


def test_info_lists_every_backend():
    out = subprocess.run([sys.executable, "-m", "vitpose_kernels.info"], capture_output=True, text=True,
                         check=True).stdout
    for op in dispatch.OPS:
        assert f"{op}:" in out
    assert "reference  available" in out
    assert "_C:" in out


def test_installed_triton_backends_import():
    """Where triton is installed, every op's Triton backend imports: a broken import would
    otherwise only turn every Triton test into a skip ("triton unavailable")."""
    import importlib.util
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed here")
    import vitpose_kernels.triton_backend  # noqa: F401  (raises the import error itself)
    for op, table in dispatch.backends().items():
        assert not any("not importable" in why for why in table["triton"]), (op, table["triton"])


def test_backends_report_shape():
    table = vk.backends()
    assert set(table) == set(dispatch.OPS)
    for op, per_backend in table.items():
        assert set(per_backend) == set(dispatch.BACKENDS)
        assert per_backend["reference"] == []
        for reasons in per_backend.values():
            assert all(isinstance(r, str) and r for r in reasons)
    assert vk.backends("window_attention") == table["window_attention"]
    with pytest.raises(ValueError, match="op must be one of"):
        vk.backends("conv")


def test_build_record():
    info = _ext.build_info()
    assert {"cuda_built", "reason", "archs", "nvcc"} <= set(info)
    mod, why = _ext.load()
    if info["cuda_built"]:
        assert mod is not None, why
        built = mod.build_info()
        assert built["archs"] and built["nvcc"]
    else:
        assert why and info["reason"] in why


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_forced_cuda_without_gpu_is_a_clear_error():
    q = torch.randn(1, 1, 6, 8)
    with pytest.raises(NotImplementedError, match=r"backend='cuda' cannot serve this call:\n  - "):
        vk.window_attention(q, q, q, grid=(2, 3), backend="cuda")


def test_auto_dispatch_on_cpu_uses_reference(caplog):
    q = torch.randn(1, 1, 6, 8)
    ref = vk.window_attention(q, q, q, grid=(2, 3), backend="reference")
    torch.testing.assert_close(vk.window_attention(q, q, q, grid=(2, 3)), ref)
    reasons = vk.explain("window_attention", q, q, q, grid=(2, 3), window=(1, 2))
    # the first backend able to serve it (the "cpu" backend, tried first on CPU tensors, has no
    # window_attention and says so)
    assert next(b for b, why in reasons.items() if not why) == "reference" and reasons["reference"] == []
    if not torch.cuda.is_available():
        assert reasons["cuda"], "the CUDA backend must say why it cannot run without a GPU"


def test_float64_is_reference_only():
    q = torch.randn(1, 1, 6, 8, dtype=torch.float64)
    assert vk.window_attention(q, q, q, grid=(2, 3)).dtype == torch.float64
    if "triton" in dispatch._REGISTRY["window_attention"]:
        with pytest.raises(NotImplementedError, match="triton"):
            vk.window_attention(q, q, q, grid=(2, 3), backend="triton")
