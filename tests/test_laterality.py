"""Laterality from the photograph: synthetic eyes of `eyefuse synth` (disc on the nasal side),
mirrored photographs, and abstention where there is no disc to see."""

from __future__ import annotations

import numpy as np
import pytest

from eyefuse.config import PreprocessConfig
from eyefuse.data.laterality import estimate_laterality
from eyefuse.data.preprocess import preprocess_array
from eyefuse.data.synth import render_eye


def model_input(rgb: np.ndarray, enhance: str) -> np.ndarray:
    return preprocess_array(rgb, PreprocessConfig(size=128, enhance=enhance))[0]


@pytest.mark.parametrize(("enhance", "least_decided"), [("graham", 10), ("none", 4)])
def test_side_of_synthetic_eyes(enhance: str, least_decided: int) -> None:
    """Never wrong; with the default Graham filter, decided on most eyes (without it the synthetic
    background's large bright patches make it abstain more often)."""
    decided = correct = 0
    for seed in range(6):
        for side in ("left", "right"):
            eye = render_eye(np.random.default_rng(seed), set(), side, (288, 256))
            est = estimate_laterality(model_input(eye.rgb, enhance))
            if est.side != "unknown":
                decided += 1
                correct += est.side == side
    assert decided >= least_decided and correct == decided, (decided, correct)


def test_mirrored_photograph_gives_the_other_side() -> None:
    eye = render_eye(np.random.default_rng(3), set(), "right", (288, 256))
    img = model_input(eye.rgb, "graham")
    assert estimate_laterality(img).side == "right"
    mirrored = estimate_laterality(np.ascontiguousarray(img[:, ::-1]))
    assert mirrored.side == "left" and mirrored.disc_x < 0


def test_abstains_without_a_disc() -> None:
    yy, xx = np.mgrid[:128, :128]
    disc = (np.hypot(xx - 63.5, yy - 63.5) < 60)[..., None]
    flat = (disc * np.array([180, 90, 40])).astype(np.uint8)
    assert estimate_laterality(flat).side == "unknown"
    assert estimate_laterality(np.zeros((64, 64, 3), np.uint8)).side == "unknown"
    with pytest.raises(ValueError):
        estimate_laterality(np.zeros((64, 64), np.uint8))
