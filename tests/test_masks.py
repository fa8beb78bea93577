"""Automatic motion masks and the --masks reader."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from t2l.atlas.flow import compute_flows
from t2l.atlas.masks import MaskConfig, camera_homography, clean_mask, iou, motion_masks, read_masks
from t2l.atlas.synthetic import SyntheticConfig, make_clip
from t2l.errors import InputError


@pytest.fixture(scope="module")
def clip():
    return make_clip(SyntheticConfig(frames=10, height=96, width=160, seed=3))


def test_camera_homography_is_the_dominant_translation():
    flow = np.zeros((60, 80, 2), np.float32)
    flow[...] = (2.0, -1.0)
    flow[20:35, 30:50] = (-6.0, 4.0)  # an object moving on its own
    h = camera_homography(flow, np.ones((60, 80), bool))
    np.testing.assert_allclose(h / h[2, 2], [[1, 0, 2], [0, 1, -1], [0, 0, 1]], atol=1e-3)
    a = camera_homography(flow, np.ones((60, 80), bool), affine=True)
    np.testing.assert_allclose(a, [[1, 0, 2], [0, 1, -1], [0, 0, 1]], atol=1e-3)
    # nothing trusted: the median flow as a translation
    t = camera_homography(flow, np.zeros((60, 80), bool))
    np.testing.assert_allclose(t[:2, 2], [2, -1])


def test_automatic_masks_find_the_moving_object(clip):
    flows = compute_flows(clip.frames)
    masks, homs = motion_masks(flows, frames=clip.frames)
    assert masks.shape == clip.masks.shape and masks.dtype == bool
    assert homs.shape == (9, 3, 3)
    assert iou(masks, clip.masks) >= 0.8
    # The camera pans by (2.5, 0.6) px/frame: the background moves the other way.
    np.testing.assert_allclose(homs[0][:2, 2] / homs[0][2, 2], [-2.5, -0.6], atol=0.3)
    # Without motion there is nothing to find.
    still = np.repeat(clip.frames[:1], 4, axis=0)
    empty, _ = motion_masks(compute_flows(still), frames=still)
    assert not empty.any()


def test_clean_mask_drops_specks_and_fills_holes():
    m = np.zeros((64, 64), bool)
    m[10:40, 10:40] = True
    m[20:25, 20:25] = False  # a hole
    m[55, 55] = True  # a speck
    out = clean_mask(m, MaskConfig())
    assert out[22, 22] and not out[55, 55] and out[30, 30]


def test_read_masks(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for i in range(6):
        a = np.zeros((20, 30), np.uint8)
        a[:, : 5 * i] = 255
        Image.fromarray(a).save(folder / f"{i}.png")
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 0
    rgba[:10, :, 3] = 255  # opaque = foreground, even though RGB is black
    Image.fromarray(rgba).save(folder / "10.png")  # natural sort: after 6.png
    per_source = read_masks(folder, [0, 2, 6], (40, 60))  # one mask per source frame, strided
    assert per_source.shape == (3, 40, 60)
    assert per_source[0].sum() == 0 and per_source[1, :, :20].all() and not per_source[1, :, 20:].any()
    assert per_source[2, :20].all() and not per_source[2, 20:].any()
    same = read_masks(folder, list(range(7)), (20, 30))  # one per used frame
    assert same.shape == (7, 20, 30)
    with pytest.raises(InputError, match="7 images"):
        read_masks(folder, list(range(9)), (20, 30))
    with pytest.raises(InputError, match="does not exist"):
        read_masks(tmp_path / "nope", [0], (20, 30))


def test_iou():
    a = np.zeros((2, 4, 4), bool)
    b = a.copy()
    a[0, :2] = True
    b[0, :1] = True
    assert iou(a, b) == pytest.approx((0.5 + 1.0) / 2)
