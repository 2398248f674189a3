"""Every non-reference backend of every op against the reference (tests/parity.py).

On a machine without a GPU the Triton cases run through the CPU interpreter at small shapes and
the CUDA cases skip with the reason; on a GPU the full sweeps run (VITPOSE_FULL_SWEEP=0 keeps
the small ones).
"""
import os

import pytest
import torch

import parity

KERNEL_BACKENDS = ["triton", "cuda"]
SCALE = "gpu" if torch.cuda.is_available() and os.environ.get("VITPOSE_FULL_SWEEP", "1") != "0" else "ci"
# VITPOSE_RANDOM_CASES trims the GPU's random sweep (benchmarks/gpu_session.sh: one short device call).
N_RANDOM = int(os.environ.get("VITPOSE_RANDOM_CASES", 500)) if SCALE == "gpu" else 24


def _skip_unless(op, backend):
    why = parity.skip_reason(op, backend)
    if why:
        pytest.skip(f"{backend} backend of {op} unavailable here: {why}")


def _check_window_attention(backend, case):
    _skip_unless("window_attention", backend)
    if backend == "cuda" and case.dtype == torch.float32:
        pytest.skip("the CUDA kernel declines fp32 (routed to Triton)")
    parity.check_window_attention(backend, case)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", parity.attention_sweep(SCALE), ids=str)
def test_window_attention(backend, case):
    _check_window_attention(backend, case)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", parity.random_attention_cases(N_RANDOM, seed=1, small=SCALE == "ci"), ids=str)
def test_window_attention_random(backend, case):
    _check_window_attention(backend, case)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", parity.decoder_sweep(SCALE), ids=str)
def test_simple_decoder(backend, case):
    _skip_unless("simple_decoder", backend)
    parity.check_simple_decoder(backend, case)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", parity.heatmap_sweep(SCALE), ids=str)
def test_decode_heatmaps(backend, case):
    _skip_unless("decode_heatmaps", backend)
    parity.check_decode_heatmaps(backend, case)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", parity.target_sweep(SCALE), ids=str)
def test_udp_targets(backend, case):
    _skip_unless("udp_targets", backend)
    parity.check_udp_targets(backend, case)


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
