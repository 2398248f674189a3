"""HRNet stages 1-3 (Sun et al., CVPR 2019) as TokenPose-B/L use them, and the ResNet bottleneck
stage that TokenPose-S puts after its stem.

Stem (two stride-2 3x3 convolutions) and stage 1 (four bottlenecks, 64 -> 256 channels) bring the
image to 1/4; each later stage adds a branch at half the resolution and twice the width, and
every HighResolutionModule ends with a fusion in which each branch receives the sum of all
branches brought to its resolution (1x1 conv + nearest upsampling from lower resolutions,
stride-2 3x3 convs from higher ones). TokenPose keeps only the 1/4 branch of stage 3 (the last
module fuses into that branch alone).

Module names follow the official code (conv1, bn1, layer1, transition1, stage2.0.branches.1.3.conv2,
stage3.3.fuse_layers.0.2.0.weight, ...), so checkpoints load as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.1)


class BasicBlock(nn.Module):
    """relu(x + bn(conv3x3(relu(bn(conv3x3(x))))))."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """relu(x + 1x1 -> 3x3 -> 1x1 (x4 channels)), ResNet's bottleneck."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def residual_layer(block, inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """``blocks`` residual blocks; the first one projects the shortcut when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                                   _bn(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def add_stem(module: nn.Module) -> None:
    """Give ``module`` the stem and stage 1 under the official names (conv1, bn1, conv2, bn2, layer1):
    two stride-2 3x3 convolutions (3 -> 64 -> 64), then four bottlenecks (64 -> 256). HRNet and
    TokenPose-S both hold these as direct children, so the names carry no prefix of their own."""
    module.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
    module.bn1 = _bn(64)
    module.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
    module.bn2 = _bn(64)
    module.layer1 = residual_layer(Bottleneck, 64, 64, 4)


def run_stem(module: nn.Module, x):
    """(B, 3, H, W) -> (B, 256, H/4, W/4) through the layers add_stem gave ``module``."""
    x = F.relu(module.bn1(module.conv1(x)))
    x = F.relu(module.bn2(module.conv2(x)))
    return module.layer1(x)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then the multi-resolution fusion. With multi_scale_output
    False only the highest-resolution branch is fused and returned."""

    def __init__(self, channels: list[int], num_blocks: list[int], multi_scale_output: bool = True):
        super().__init__()
        if len(channels) != len(num_blocks):
            raise ValueError(f"one block count per branch: channels={channels}, num_blocks={num_blocks}")
        n = len(channels)
        self.branches = nn.ModuleList(residual_layer(BasicBlock, c, c, b) for c, b in zip(channels, num_blocks))
        self.fuse_layers = None
        if n > 1:
            self.fuse_layers = nn.ModuleList(
                nn.ModuleList(self._fuse(channels, j, i) for j in range(n))
                for i in range(n if multi_scale_output else 1))

    @staticmethod
    def _fuse(channels, j: int, i: int) -> nn.Module | None:
        """Brings branch j to branch i's resolution and width (None: j is i)."""
        if j == i:
            return None
        if j > i:  # lower resolution: 1x1 conv, then nearest upsampling
            return nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False), nn.BatchNorm2d(channels[i]),
                                 nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
        # higher resolution: i - j stride-2 3x3 convs; ReLU between them, not after the last
        steps = [_conv_bn(channels[j], channels[j], 3, 2, relu=True) for _ in range(i - j - 1)]
        return nn.Sequential(*steps, _conv_bn(channels[j], channels[i], 3, 2, relu=False))

    def forward(self, xs: list):
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, fuse in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else fuse[0](xs[0])
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else fuse[j](xs[j]))
            out.append(F.relu(y))
        return out


@dataclass(frozen=True)
class HRNetSpec:
    """The stages TokenPose uses: stage 2 (one module, two branches) and stage 3 (four modules,
    three branches), four BasicBlocks per branch, widths C, 2C, 4C (C = 32 or 48)."""

    width: int = 32
    stage2_modules: int = 1
    stage3_modules: int = 4
    blocks: int = 4


class HRNetStage3(nn.Module):
    """HRNet stages 1-3: (B, 3, H, W) -> the 1/4 branch of stage 3, (B, C, H/4, W/4)."""

    def __init__(self, spec: HRNetSpec = HRNetSpec()):
        super().__init__()
        C = spec.width
        self.spec = spec
        add_stem(self)
        self.transition1 = self._transition([256], [C, 2 * C])
        self.stage2 = nn.Sequential(*(HighResolutionModule([C, 2 * C], [spec.blocks] * 2)
                                      for _ in range(spec.stage2_modules)))
        self.transition2 = self._transition([C, 2 * C], [C, 2 * C, 4 * C])
        n3 = spec.stage3_modules
        self.stage3 = nn.Sequential(*(HighResolutionModule([C, 2 * C, 4 * C], [spec.blocks] * 3,
                                                           multi_scale_output=m < n3 - 1) for m in range(n3)))

    @staticmethod
    def _transition(before: list[int], after: list[int]) -> nn.ModuleList:
        """Existing branches change width by a 3x3 conv (None if they keep it); each new branch
        comes from the lowest-resolution one by stride-2 3x3 convs."""
        layers = []
        for i, c in enumerate(after):
            if i < len(before):
                layers.append(None if c == before[i] else _conv_bn(before[i], c, 3, 1, relu=True))
            else:
                cin = before[-1]
                steps = [_conv_bn(cin, cin, 3, 2, relu=True) for _ in range(i - len(before))]
                layers.append(nn.Sequential(*steps, _conv_bn(cin, c, 3, 2, relu=True)))
        return nn.ModuleList(layers)

    @property
    def out_channels(self) -> int:
        return self.spec.width

    def forward(self, x):
        x = run_stem(self, x)
        ys = self.stage2([x if t is None else t(x) for t in self.transition1])
        # new branches start from the lowest resolution of the previous stage
        xs = [ys[i] if t is None else t(ys[-1]) for i, t in enumerate(self.transition2)]
        return self.stage3(xs)[0]
