"""The CPU backend of decode_heatmaps (vitpose_kernels/cpu_backend): picked for CPU tensors, the
exact shortcut (blur only around the maximum) against the full blur, the fallback taken exactly
on the maps that need it, first-index ties, border maxima, dtypes, strides, empty batches. The
parity harness (tests/test_parity.py) checks it against the reference as well."""
import torch

import vitpose_kernels as vk
from vitpose_kernels.cpu_backend import decode_heatmaps as cpu

import parity

INPUT = (48, 64)


def call(hm, **kw):
    args = vk.ops._prepare_decode_heatmaps(hm, input_size=INPUT, **kw)
    return args


def test_dispatch_picks_it_for_cpu_tensors_only():
    hm = parity.realistic_heatmaps(2, 17, 16, 12)
    why = vk.explain("decode_heatmaps", hm, input_size=INPUT)
    assert list(why)[:2] == ["cpu", "reference"] and why["cpu"] == []
    assert any("require grad" in r for r in vk.explain("decode_heatmaps", hm.requires_grad_(), input_size=INPUT)["cpu"])
    kp, _ = vk.decode_heatmaps(hm, input_size=INPUT)  # with grad: the reference serves it
    assert kp.shape == (2, 17, 2)


def test_shortcut_equals_full_blur_and_fallback_is_taken_where_needed(monkeypatch):
    strong = parity.realistic_heatmaps(6, 17, 64, 48, seed=1, border=True)
    weak = strong.clone()
    weak[1] *= 1e-4          # the blurred values fall under the 1e-3 floor: full blur needed
    weak[3, 5] *= 200.0      # a maximum above 50: full blur needed
    calls = []
    full_blur_max = cpu.full_blur_max
    monkeypatch.setattr(cpu, "full_blur_max", lambda maps, size: calls.append(len(maps)) or full_blur_max(maps, size))
    args = call(weak, method="udp")
    fast = cpu.decode(*args)
    assert calls == [17 + 1]  # exactly the maps of instance 1 and one map of instance 3
    full = cpu.decode(*args, always_full_blur=True)
    ref = vk.decode_heatmaps(weak, input_size=INPUT, backend="reference")
    for got in (fast, full):
        torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)            # scores: the same maxima
        assert (got[0] - ref[0]).abs().max() < 1e-3                           # keypoints, crop pixels
    assert (fast[0] - full[0]).abs().max() < 1e-4


def test_ties_borders_dtypes_strides_and_empty():
    hm = torch.zeros(2, 3, 9, 7)
    hm[0, 0, 4, 2] = hm[0, 0, 4, 5] = hm[0, 0, 7, 1] = 1.0   # ties: the first in row-major order wins
    hm[0, 1, 0, 0] = 2.0                                      # corner maximum
    hm[1, 2, 8, 6] = 3.0
    kp, sc = vk.decode_heatmaps(hm, input_size=(6, 8), method="argmax", backend="cpu")
    assert kp[0, 0].tolist() == [2.0, 4.0] and kp[0, 1].tolist() == [0.0, 0.0] and kp[1, 2].tolist() == [6.0, 8.0]
    assert sc[0, 0] == 1.0 and sc[1, 2] == 3.0
    big = parity.realistic_heatmaps(4, 17, 32, 24, seed=2)
    ref = vk.decode_heatmaps(big, input_size=INPUT, backend="reference")
    for variant in (big.half(), big.bfloat16(), big.transpose(2, 3).contiguous().transpose(2, 3)):
        got = vk.decode_heatmaps(variant, input_size=INPUT, backend="cpu")
        want = vk.decode_heatmaps(variant, input_size=INPUT, backend="reference")
        assert (got[0] - want[0]).abs().max() < 1e-3 and torch.equal(got[1], want[1])
    assert (vk.decode_heatmaps(big, input_size=INPUT, backend="cpu")[0] - ref[0]).abs().max() < 1e-3
    kp, sc = vk.decode_heatmaps(big[:0], input_size=INPUT, backend="cpu")
    assert kp.shape == (0, 17, 2) and sc.shape == (0, 17)
