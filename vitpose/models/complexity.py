"""Model size and compute, two ways: as TokenPose's Table 1 counts them, and as they are.

TokenPose (like HRNet) reports the numbers of HRNet's ``get_model_summary`` (lib/utils/utils.py of
the official repositories), which hooks every module and counts
- parameters of Conv*, BatchNorm* and Linear modules only (not LayerNorm, not the keypoint tokens,
  not the position embedding);
- "multiply-adds": per convolution, weight elements x output pixels; per Linear, output elements x
  ``input.size(1)``. For a token input (B, N, C) that second factor is N, not C: the paper's
  transformer GFLOPs are N x N x C_out per Linear, not N x C_in x C_out. Attention's matmuls and
  everything else are not counted. The total is divided by 1024^3.
``paper_counts`` applies exactly that rule (it reproduces all six Table 1 rows within 3 %);
``true_counts`` gives every parameter and the real multiply-adds of the forward pass
(torch.utils.flop_counter FLOPs / 2, attention included).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def _paper_rule(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int]:
    params, macs, hooks = [0], [0], []

    def hook(module, inputs, output):
        name = type(module).__name__
        if "Conv" in name or "BatchNorm" in name or "Linear" in name:
            params[0] += sum(p.numel() for p in module.parameters())
        if "Conv" in name and hasattr(module, "weight"):
            macs[0] += module.weight.numel() * output.shape[2:].numel()
        elif isinstance(module, nn.Linear):
            macs[0] += output.numel() * inputs[0].shape[1]

    for m in model.modules():
        if m is not model and not isinstance(m, (nn.Sequential, nn.ModuleList)):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(pixel_values)
    finally:
        for h in hooks:
            h.remove()
    return params[0], macs[0]


def _input(model: nn.Module, device) -> torch.Tensor:
    h, w = model.config.img_size
    return torch.zeros(1, 3, h, w, device=device)


def paper_counts(model: nn.Module) -> dict:
    """{"params_m", "gflops"} by get_model_summary's rule, for one image of the model's input size
    (runs on whatever device the model is on; the meta device costs nothing)."""
    device = next(model.parameters()).device
    params, macs = _paper_rule(model.eval(), _input(model, device))
    return {"params_m": params / 1e6, "gflops": macs / 1024 ** 3}


def true_counts(model: nn.Module) -> dict:
    """{"params_m": all parameters and constant buffers (the sine embedding), "gmacs": the forward's
    multiply-adds (matmuls and convolutions, attention included) for one image}."""
    from torch.utils.flop_counter import FlopCounterMode
    device = next(model.parameters()).device
    params = sum(p.numel() for p in model.parameters())
    params += sum(b.numel() for n, b in model.named_buffers() if n.endswith("pos_embedding"))
    # The fused attention is one opaque op to the counter: count the same model on the reference ops.
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if "backend" in vars(m):  # the modules that call vitpose_kernels ops
            m.backend = "reference"
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        twin.eval()(_input(model, device))
    return {"params_m": params / 1e6, "gmacs": counter.get_total_flops() / 2 / 1e9}
