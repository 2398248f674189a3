"""Reference simple_decoder (ViTPose Eq. 3): ReLU, bilinear upsampling, then a k x k conv."""
import torch
import torch.nn.functional as F


def simple_decoder(x: torch.Tensor, weight: torch.Tensor, bias, scale_factor: int) -> torch.Tensor:
    up = F.interpolate(torch.relu(x), scale_factor=scale_factor, mode="bilinear", align_corners=False)
    return F.conv2d(up, weight, bias, padding=weight.shape[-1] // 2)
