"""The per-input generator: a Deep-Image-Prior style "skip" U-Net that outputs an RGBA edit layer.

Layout (paper A.1 and the reference implementation): `depth` scales, `width` channels on every
down and up level, a 1x1 skip branch of `skip` channels at every level, stride-2 3x3 convs down,
bilinear x2 up, reflection padding, BatchNorm + LeakyReLU(0.2). BatchNorm stays in training mode
(a batch of one image: per-image statistics). At the default width the net has 3,115,548
parameters. Odd sizes work because concatenation centre-crops to the smaller tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2l.errors import UsageError

# Rows of C^T: maps the head's decorrelated RGB y to ordinary RGB before the sigmoid as rgb = C y,
# i.e. rgb_c = sum_j C^T[j][c] * y_j (channel 0 is luminance-like: it feeds R, G and B about equally).
COLOR_DECORRELATION = (
    (0.5628, 0.5845, 0.5845),
    (0.3117, 0.0, -0.3117),
    (0.0693, -0.1732, 0.1039),
)


@dataclass(frozen=True)
class GeneratorConfig:
    depth: int = 7  # number of scales; input sides must be >= 2**depth + 1
    width: int = 128  # channels on every down and up level
    skip: int = 4  # channels of the 1x1 skip branch at every level

    @property
    def min_size(self) -> int:
        return 2**self.depth + 1

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    pad = (k - 1) // 2
    layers: list[nn.Module] = [nn.ReflectionPad2d(pad)] if pad else []
    layers.append(nn.Conv2d(cin, cout, k, stride=stride))
    return nn.Sequential(*layers)


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


def _center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dh, dw = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., dh : dh + h, dw : dw + w]


class _Level(nn.Module):
    """One scale: concat(skip(x), up(deeper(x))) -> BN -> 3x3 conv -> BN -> LReLU -> 1x1 conv (-> BN) -> LReLU."""

    def __init__(self, cin: int, cfg: GeneratorConfig, level: int):
        super().__init__()
        w, s = cfg.width, cfg.skip
        self.skip = nn.Sequential(_conv(cin, s, 1), nn.BatchNorm2d(s), _act())
        self.down = nn.Sequential(
            _conv(cin, w, 3, stride=2), nn.BatchNorm2d(w), _act(), _conv(w, w, 3), nn.BatchNorm2d(w), _act()
        )
        self.inner = _Level(w, cfg, level + 1) if level + 1 < cfg.depth else None
        top = level == 0
        self.merge = nn.Sequential(
            nn.BatchNorm2d(s + w),
            _conv(s + w, w, 3),
            nn.BatchNorm2d(w),
            _act(),
            _conv(w, w, 1),
            *([] if top else [nn.BatchNorm2d(w)]),
            _act(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(x)  # B, s, H, W
        deep = self.down(x)  # B, w, ceil(H/2), ceil(W/2)
        if self.inner is not None:
            deep = self.inner(deep)
        deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=False)
        h, w = min(skip.shape[-2], deep.shape[-2]), min(skip.shape[-1], deep.shape[-1])
        x = torch.cat([_center_crop(skip, h, w), _center_crop(deep, h, w)], dim=1)
        return self.merge(x)


class Generator(nn.Module):
    """RGB image in [0,1] -> RGBA edit layer in [0,1] (straight alpha), same H, W for sides >= min_size.

    >>> g = Generator(GeneratorConfig(depth=3, width=8)); g(torch.rand(1, 3, 33, 40)).shape
    torch.Size([1, 4, 33, 40])
    """

    def __init__(self, cfg: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.cfg = cfg
        self.body = _Level(3, cfg, 0)
        self.head = nn.Conv2d(cfg.width, 4, 1)
        self.register_buffer("decorrelate", torch.tensor(COLOR_DECORRELATION), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if min(H, W) < self.cfg.min_size:
            raise UsageError(
                f"image {W}x{H} is smaller than the generator's minimum side {self.cfg.min_size}",
                f"use a larger --size (>= {self.cfg.min_size})",
            )
        y = self.head(self.body(x))  # B, 4, h, w (h, w may be 1 smaller for odd sizes)
        rgb = torch.einsum("jc,bjhw->bchw", self.decorrelate.to(y.dtype), y[:, :3])  # rgb = C y
        out = torch.sigmoid(torch.cat([rgb, y[:, 3:]], dim=1))
        if out.shape[-2:] != (H, W):  # odd sides: the crop loses a border pixel; resample to the input size
            out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
        return out  # B, 4, H, W


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
