"""Every non-reference backend of every op against the reference (tests/parity.py).

Only backends that run on this machine are collected, so the summary line counts what ran: on a
machine without a GPU the Triton cases run through the CPU interpreter at small shapes, the CUDA
kernels are checked through tests/test_cuda_emulated.py instead, and test_gpu_sweep_owed says
what a GPU would add. On a GPU the full sweeps run (VITPOSE_FULL_SWEEP=0 keeps the small ones).
"""
import os

import pytest
import torch

import parity

SCALE = "gpu" if torch.cuda.is_available() and os.environ.get("VITPOSE_FULL_SWEEP", "1") != "0" else "ci"
# VITPOSE_RANDOM_CASES trims the GPU's random sweep (benchmarks/gpu_session.sh: one short device call).
N_RANDOM = int(os.environ.get("VITPOSE_RANDOM_CASES", 500)) if SCALE == "gpu" else 24
MISSING = {b: parity.skip_reason("window_attention", b) for b in ("triton", "cuda")}
KERNEL_BACKENDS = [b for b, why in MISSING.items() if why is None]


def _cases(op, cases):
    """(backend, case) pairs this machine runs: the CUDA kernels decline float32 (Triton serves it)."""
    return [pytest.param(b, c, id=f"{c}-{b}") for b in KERNEL_BACKENDS for c in cases
            if parity.skip_reason(op, b) is None and not (op == "window_attention" and b == "cuda"
                                                          and c.dtype == torch.float32)]


def test_gpu_sweep_owed():
    """Says which backends' parity sweeps are not collected here, and why."""
    owed = {b: why for b, why in MISSING.items() if why}
    if owed:
        pytest.skip("not collected here: " + "; ".join(f"the {b} sweeps ({why})" for b, why in owed.items())
                    + ("; the CUDA kernels run through tests/test_cuda_emulated.py instead" if "cuda" in owed else ""))


@pytest.mark.parametrize("backend,case", _cases("window_attention", parity.attention_sweep(SCALE)))
def test_window_attention(backend, case):
    parity.check_window_attention(backend, case)


@pytest.mark.parametrize("backend,case", _cases("window_attention", parity.random_attention_cases(
    N_RANDOM, seed=1, small=SCALE == "ci")))
def test_window_attention_random(backend, case):
    parity.check_window_attention(backend, case)


@pytest.mark.parametrize("backend,case", _cases("simple_decoder", parity.decoder_sweep(SCALE)))
def test_simple_decoder(backend, case):
    parity.check_simple_decoder(backend, case)


@pytest.mark.parametrize("backend,case", _cases("decode_heatmaps", parity.heatmap_sweep(SCALE)))
def test_decode_heatmaps(backend, case):
    parity.check_decode_heatmaps(backend, case)


@pytest.mark.parametrize("backend,case", _cases("udp_targets", parity.target_sweep(SCALE)))
def test_udp_targets(backend, case):
    parity.check_udp_targets(backend, case)


def test_effective_bounds_within_the_limit():
    """Every tensor of every case of the CI sweeps is held to an effective bound <= BOUND_LIMIT x
    RMS(truth) (issue 12), so a harness change or a new case that loosens it fails here; the same
    table as `python tests/parity.py --table ci` (a few seconds: no kernel runs)."""
    lines = []
    worst = parity.bound_table("ci", limit=parity.BOUND_LIMIT, out=lines.append)
    assert worst <= parity.BOUND_LIMIT, "\n".join(line for line in lines[1:] if "*" in line or line.startswith("worst"))


@pytest.mark.parametrize("case", parity.attention_sweep("ci")[:6], ids=str)
def test_harness_accepts_the_reference(case):
    """The harness itself, run on the reference: a failure here is a harness bug."""
    parity.check_window_attention("reference", case)


# The CPU backend (vectorised torch/numpy, CPU tensors only): the same harness, on the CPU
# whatever the machine has, at the CI sweep plus batches of the size it is made for.
CPU_HEATMAP_CASES = parity.heatmap_sweep("ci") + [
    parity.HeatmapCase(B=64, K=17, size=(64, 48), flip=True, boxes=True, border=True),
    parity.HeatmapCase(B=8, K=133, size=(96, 72), boxes=True, seed=3),
    parity.HeatmapCase(B=16, K=17, size=(64, 48), noise_only=True, flip=True),
    parity.HeatmapCase(B=5, K=3, size=(7, 5), border=True, seed=5),
]


@pytest.mark.parametrize("case", CPU_HEATMAP_CASES, ids=str)
def test_decode_heatmaps_cpu_backend(case):
    parity.check_decode_heatmaps("cpu", case, dev=torch.device("cpu"))
