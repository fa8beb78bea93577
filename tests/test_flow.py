"""DIS flow and the forward-backward consistency check on a known shift."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from t2l.atlas.flow import FlowConfig, compute_flows, consistency, endpoint_error
from t2l.atlas.synthetic import noise_texture


def _shifted_pair(dx: float, dy: float, size=(96, 128)):
    rng = np.random.default_rng(1)
    big = (noise_texture(size[0] + 40, size[1] + 40, rng) * 255).astype(np.uint8)
    a = big[20 : 20 + size[0], 20 : 20 + size[1]]
    # b(p) = a(p - d): content moves by +d from a to b
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    b = cv2.warpAffine(big, m, (big.shape[1], big.shape[0]), flags=cv2.INTER_LINEAR)[
        20 : 20 + size[0], 20 : 20 + size[1]
    ]
    return np.stack([a, b])


def test_known_shift_is_recovered():
    frames = _shifted_pair(3.0, -2.0)
    flows = compute_flows(frames)
    assert flows["forward"].shape == (1, 96, 128, 2) and flows["forward_valid"].dtype == bool
    truth = np.broadcast_to(np.float32([3.0, -2.0]), flows["forward"].shape)
    inner = np.zeros((1, 96, 128), bool)
    inner[:, 8:-8, 8:-8] = True
    assert endpoint_error(flows["forward"], truth, inner & flows["forward_valid"]) < 0.3
    back = np.broadcast_to(np.float32([-3.0, 2.0]), flows["backward"].shape)
    assert endpoint_error(flows["backward"], back, inner & flows["backward_valid"]) < 0.3
    # Most pixels are trusted; the 3 px strip that leaves the frame on the right is not.
    assert flows["forward_valid"][0, 8:-8, 8:-8].mean() > 0.9
    assert not flows["forward_valid"][0, :, -2:].any()


def test_consistency_rejects_disagreeing_backward_flow():
    fwd = np.zeros((32, 40, 2), np.float32)
    fwd[..., 0] = 2.0
    good = consistency(fwd, -fwd, max_error=1.0)
    assert good[:, :-2].all() and not good[:, -2:].any()
    bad = consistency(fwd, np.zeros_like(fwd), max_error=1.0)  # round trip misses by 2 px
    assert not bad.any()
    half = consistency(fwd, -fwd * 0.75, max_error=1.0)  # misses by 0.5 px: still trusted
    assert half[:, :-2].all()


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError):
        compute_flows(_shifted_pair(1, 1), FlowConfig(preset="nope"))
