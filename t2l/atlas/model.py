"""The atlas representation: explicit texture images and cheap per-frame mappings.

Each layer ("bg", and "fg" with two layers) is a learnable texture image (an atlas) plus a mapping
from every frame pixel to atlas coordinates:

    uv_t(p) = h_t(p) + d_t(p) + r_t(p)

h_t is a per-frame homography (a fixed initial estimate from the optical flow times a learnable
correction), d_t a coarse per-frame displacement grid, bilinearly upsampled, that absorbs
parallax and non-rigid motion, and r_t a dense residual field at half the frame resolution
(bilinearly upsampled) for what a coarse grid cannot follow (a face changing expression, the edge
between near and far things). r_t is not learned by gradient descent: registration sets it from the
dense flow between each frame and its reconstruction (t2l/atlas/register.py `refine_frames`).
The foreground opacity lives in the foreground atlas (a fourth, logit channel), so it moves with the
object. Reconstruction: gain_t * (alpha * fg + (1 - alpha) * bg),
with a per-frame RGB gain for exposure changes and fades (a black frame is gain 0, not new content).

Coordinates: frame pixels are normalised to [-1, 1] at pixel centres (x_n = (x + 0.5) / W * 2 - 1);
atlas coordinates uv are grid_sample coordinates with align_corners=False, so atlas-image pixel
x = (u + 1) * Wa / 2 (continuous, pixel j covers [j, j+1)): uv_to_px = coords.grid_uv_to_px(size).

Per-frame parameters are 8 + 2*gh*gw numbers; the residual fields add 2 * H/2 * W/2 per frame and
layer (15 MB per layer for 70 frames at 432 x 243).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2l.atlas.coords import sample_grid


@dataclass(frozen=True)
class AtlasModelConfig:
    frames: int  # T
    height: int  # H, frame pixels (working resolution)
    width: int  # W
    bg_size: tuple[int, int]  # (Ha, Wa) background atlas image
    fg_size: tuple[int, int] | None = None  # (Hf, Wf) foreground atlas image; None = one layer
    grid: tuple[int, int] = (12, 20)  # per-frame displacement grid (rows, cols)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> AtlasModelConfig:
        fg = d.get("fg_size")
        return AtlasModelConfig(
            frames=int(d["frames"]), height=int(d["height"]), width=int(d["width"]),
            bg_size=tuple(d["bg_size"]), fg_size=tuple(fg) if fg else None, grid=tuple(d["grid"]),
        )  # fmt: skip


def frame_grid(height: int, width: int, device=None) -> torch.Tensor:
    """Homogeneous normalised pixel-centre coordinates. Returns H, W, 3 (x_n, y_n, 1) in [-1, 1]."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy, torch.ones_like(gx)], -1)


def opacity_field_size(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of a frame's opacity correction field: an eighth of the frame's, rounded up."""
    return (height + 7) // 8, (width + 7) // 8


def residual_size(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of the dense residual field of a frame: half the frame's, rounded up."""
    return (height + 1) // 2, (width + 1) // 2


class LayerMapping(nn.Module):
    """Frame pixel -> atlas uv for one layer: initial homography x learned correction + displacement grid
    (+ the dense residual field, a buffer set by registration, when `residual` gives its size)."""

    def __init__(self, h0: torch.Tensor, grid: tuple[int, int], residual: tuple[int, int] | None = None):
        super().__init__()
        T = h0.shape[0]
        self.register_buffer("h0", h0.float())  # T, 3, 3: normalised frame coords -> normalised atlas coords
        self.dh = nn.Parameter(torch.zeros(T, 8))  # T, 8: correction I + dh, in normalised frame units
        self.disp = nn.Parameter(torch.zeros(T, 2, *grid))  # T, 2, gh, gw: displacement in atlas uv units
        # T, 2, Hr, Wr: dense residual in atlas uv units (a buffer: set by registration, not learned)
        self.register_buffer("res", None if residual is None else torch.zeros(T, 2, *residual))
        self.register_buffer("eye", torch.eye(3), persistent=False)  # 3, 3; built once, not saved

    def homographies(self, t: torch.Tensor) -> torch.Tensor:
        """B frame indices -> B, 3, 3."""
        d = F.pad(self.dh[t], (0, 1))  # B, 9 (h33 stays 1)
        return self.h0[t] @ (self.eye + d.view(-1, 3, 3))

    def forward(self, t: torch.Tensor, xy1: torch.Tensor) -> torch.Tensor:
        """uv for frames t (B,) at homogeneous normalised frame coords xy1 (H, W, 3). Returns B, H, W, 2."""
        H, W = xy1.shape[:2]
        uvw = torch.einsum("bij,hwj->bhwi", self.homographies(t), xy1)  # B, H, W, 3
        uv = uvw[..., :2] / uvw[..., 2:]
        disp = F.interpolate(self.disp[t], size=(H, W), mode="bilinear", align_corners=True)  # B, 2, H, W
        if self.res is not None:  # pixel-centre aligned, as cv2.resize makes it (register.py)
            disp = disp + F.interpolate(self.res[t], size=(H, W), mode="bilinear", align_corners=False)
        return uv + disp.permute(0, 2, 3, 1)


class AtlasModel(nn.Module):
    """Layered atlas of one clip. forward(t) reconstructs frames t."""

    def __init__(self, cfg: AtlasModelConfig, bg_h0: torch.Tensor, fg_h0: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        Ha, Wa = cfg.bg_size
        self.bg_texture = nn.Parameter(torch.full((1, 3, Ha, Wa), 0.5))  # 1, 3, Ha, Wa RGB in [0,1]
        res = residual_size(cfg.height, cfg.width)
        self.bg_map = LayerMapping(bg_h0, cfg.grid, res)
        self.register_buffer("xy1", frame_grid(cfg.height, cfg.width), persistent=False)
        self.gain = nn.Parameter(torch.ones(cfg.frames, 3))  # T, 3: per-frame RGB gain (exposure, fades)
        if cfg.fg_size is not None:
            Hf, Wf = cfg.fg_size
            fg = torch.full((1, 4, Hf, Wf), 0.5)
            fg[:, 3] = -6.0
            self.fg_texture = nn.Parameter(fg)  # 1, 4, Hf, Wf: RGB in [0,1] and alpha logit
            self.fg_map = LayerMapping(fg_h0, cfg.grid, res)
            # per-frame correction of the opacity logit (coarse: 8 frame px a cell): every pixel of every
            # frame maps somewhere into the foreground atlas, and where an object appears late (a hand
            # entering) its texels are the same the background pixels of the earlier frames map to
            self.alpha_field = nn.Parameter(
                torch.zeros(cfg.frames, 1, *opacity_field_size(cfg.height, cfg.width))
            )

    @property
    def layered(self) -> bool:
        return self.cfg.fg_size is not None

    @staticmethod
    def sample(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """Sample a 1, C, Ha, Wa texture at uv (B, H, W, 2; our uv IS the grid). Returns B, C, H, W."""
        return sample_grid(texture, uv, padding="border")

    def forward(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruct frames t (B,).

        Returns:
            rgb B,3,H,W in [0,1]; uv_bg B,H,W,2; rgb_bg B,3,H,W; and with two layers uv_fg B,H,W,2,
            rgb_fg B,3,H,W, alpha B,1,H,W in (0,1). rgb includes the frame's gain; the layers do not.
        """
        gain = self.gain[t].clamp(min=0)[:, :, None, None]  # B, 3, 1, 1
        out = {"uv_bg": self.bg_map(t, self.xy1)}
        out["rgb_bg"] = self.sample(self.bg_texture, out["uv_bg"]).clamp(0, 1)
        if not self.layered:
            out["rgb"] = gain * out["rgb_bg"]
            return out
        out["uv_fg"] = self.fg_map(t, self.xy1)
        fg = self.sample(self.fg_texture, out["uv_fg"])
        out["rgb_fg"] = fg[:, :3].clamp(0, 1)
        field = F.interpolate(self.alpha_field[t], size=fg.shape[-2:], mode="bilinear", align_corners=False)
        out["alpha"] = torch.sigmoid(fg[:, 3:4] + field)
        out["rgb"] = gain * (out["alpha"] * out["rgb_fg"] + (1 - out["alpha"]) * out["rgb_bg"])
        return out

    def mappings(self) -> dict[str, LayerMapping]:
        return {"bg": self.bg_map, **({"fg": self.fg_map} if self.layered else {})}

    def textures(self) -> dict[str, torch.Tensor]:
        return {"bg": self.bg_texture, **({"fg": self.fg_texture} if self.layered else {})}
