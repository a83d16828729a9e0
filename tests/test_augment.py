"""Batched per-eye augmentation: shapes, reproducibility, laterality flip, eye dropout, colour, blur."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from eyefuse.config import AugmentConfig
from eyefuse.data.augment import (
    augment_batch,
    check_augment_config,
    eval_transform,
    gaussian_blur,
)
from eyefuse.errors import ConfigError
from eyefuse.models.inputs import IMAGENET_MEAN, IMAGENET_STD, normalize

B, S, L = 6, 32, 4

#: Every strength off: the augmentation must be the identity.
IDENTITY = AugmentConfig(
    scale_min=1.0,
    ratio_max=1.0,
    rotation=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    blur_prob=0.0,
    flip="none",
    flip_prob=0.0,
    eye_dropout=0.0,
)

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def asymmetric_images(n: int, seed: int) -> torch.Tensor:
    """uint8 images whose left and right halves differ (a horizontal ramp plus noise)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 200, S).view(1, 1, 1, S).expand(n, 3, S, S)
    noise = torch.randint(0, 50, (n, 3, S, S), generator=g)
    return (ramp + noise).to(torch.uint8)


def make_batch(device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {
        "left": asymmetric_images(B, 1),
        "right": asymmetric_images(B, 2),
        "left_present": torch.ones(B, dtype=torch.bool),
        "right_present": torch.ones(B, dtype=torch.bool),
        "labels": torch.randint(0, 2, (B, L), generator=g).float(),
        "left_labels": torch.randint(0, 2, (B, L), generator=g).float(),
        "right_labels": torch.randint(0, 2, (B, L), generator=g).float() + 2.0,  # distinguishable from left
        "eye_labels_known": torch.tensor([[True, False]] * B),
        "index": torch.arange(B),
    }
    return {k: v.to(device) for k, v in batch.items()}


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
def test_output_shape_dtype_range(device: str) -> None:
    batch = make_batch(device)
    out = augment_batch(batch, AugmentConfig(blur_prob=0.5), gen(0, device))
    for key in ("left", "right"):
        assert out[key].shape == (B, 3, S, S) and out[key].dtype == torch.float32
        assert out[key].device.type == device
        assert out[key].min() >= 0 and out[key].max() <= 255
    assert set(out) == set(batch)
    assert torch.equal(out["index"], batch["index"]) and torch.equal(out["labels"], batch["labels"])
    # The input is not modified in place.
    assert batch["left"].dtype == torch.uint8 and torch.equal(batch["left"], make_batch(device)["left"])


def test_reproducible_for_a_seed_and_different_for_another() -> None:
    batch = make_batch()
    cfg = AugmentConfig(blur_prob=0.5, eye_dropout=0.3)
    a = augment_batch(batch, cfg, gen(7))
    b = augment_batch(batch, cfg, gen(7))
    c = augment_batch(batch, cfg, gen(8))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["left"], c["left"])


def test_eyes_get_independent_parameters() -> None:
    batch = make_batch()
    batch["right"] = batch["left"].clone()
    out = augment_batch(batch, dataclasses.replace(IDENTITY, rotation=30.0, brightness=0.3), gen(0))
    for i in range(B):
        assert not torch.allclose(out["left"][i], out["right"][i])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_identity_when_all_strengths_are_zero(dtype: torch.dtype, device: str) -> None:
    batch = make_batch(device)
    batch["left"], batch["right"] = batch["left"].to(dtype), batch["right"].to(dtype)
    out = augment_batch(batch, IDENTITY, gen(3, device))
    torch.testing.assert_close(out["left"], batch["left"].float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["right"], batch["right"].float(), atol=1e-3, rtol=0)
    for key in ("left_present", "right_present", "left_labels", "right_labels", "eye_labels_known"):
        assert torch.equal(out[key], batch[key]), key


def test_mirror_swap_mirrors_and_swaps_both_eyes() -> None:
    batch = make_batch()
    cfg = dataclasses.replace(IDENTITY, flip="mirror_swap", flip_prob=1.0)
    batch["right_present"][0] = False
    batch["right"][0] = 0
    out = augment_batch(batch, cfg, gen(0))
    torch.testing.assert_close(out["left"], batch["right"].float().flip(-1), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["right"], batch["left"].float().flip(-1), atol=1e-3, rtol=0)
    assert torch.equal(out["left_present"], batch["right_present"])
    assert torch.equal(out["right_present"], batch["left_present"])
    assert torch.equal(out["left_labels"], batch["right_labels"])
    assert torch.equal(out["right_labels"], batch["left_labels"])
    assert out["eye_labels_known"].tolist() == [[False, True]] * B
    assert torch.equal(out["labels"], batch["labels"])
    # The ramp rises left to right in the input, so the mirrored image falls.
    assert out["right"][:, :, :, :4].mean() > out["right"][:, :, :, -4:].mean()


def test_mirror_swap_is_per_patient() -> None:
    batch = make_batch()
    n = 32
    batch = {k: torch.cat([v] * (n // B + 1))[:n] for k, v in batch.items()}
    out = augment_batch(batch, dataclasses.replace(IDENTITY, flip="mirror_swap", flip_prob=0.5), gen(0))
    flipped = 0
    for i in range(n):
        same = torch.allclose(out["left"][i], batch["left"][i].float(), atol=1e-3)
        swapped = torch.allclose(out["left"][i], batch["right"][i].float().flip(-1), atol=1e-3)
        assert same != swapped
        assert torch.equal(
            out["left_labels"][i], batch["right_labels"][i] if swapped else batch["left_labels"][i]
        )
        flipped += swapped
    assert 0 < flipped < n


def test_flip_none_never_flips() -> None:
    batch = make_batch()
    out = augment_batch(batch, dataclasses.replace(IDENTITY, flip="none", flip_prob=1.0), gen(0))
    torch.testing.assert_close(out["left"], batch["left"].float(), atol=1e-3, rtol=0)
    assert torch.equal(out["left_labels"], batch["left_labels"])


def test_eye_dropout_hides_exactly_one_eye_of_complete_pairs() -> None:
    batch = make_batch()
    batch["left_present"][0] = False  # a patient with one eye is never left blind
    batch["left"][0] = 0
    batch["eye_labels_known"][:] = True
    dropped_sides = set()
    for seed in range(4):
        out = augment_batch(batch, dataclasses.replace(IDENTITY, eye_dropout=1.0), gen(seed))
        present = torch.stack((out["left_present"], out["right_present"]), 1)
        assert present.sum(1).tolist() == [1] * B
        assert present[0].tolist() == [False, True]
        for i in range(1, B):
            hidden = 0 if not present[i, 0] else 1
            side = ("left", "right")[hidden]
            dropped_sides.add(side)
            assert not out[side][i].any(), "a hidden eye must be zero"
            assert out[("left", "right")[1 - hidden]][i].any()
            assert not out["eye_labels_known"][i, hidden]
            assert not out[f"{side}_labels"][i].any()
    assert dropped_sides == {"left", "right"}


def test_colour_jitter_stays_in_range_and_keeps_absent_eyes_black() -> None:
    batch = make_batch()
    batch["right_present"][:] = False
    batch["right"][:] = 0
    cfg = dataclasses.replace(IDENTITY, brightness=0.5, contrast=0.5, saturation=0.5)
    out = augment_batch(batch, cfg, gen(0))
    assert not out["right"].any()
    assert not torch.allclose(out["left"], batch["left"].float())


def test_brightness_is_a_multiplier_in_range() -> None:
    batch = make_batch()
    batch["left"] = torch.full((B, 3, S, S), 100, dtype=torch.uint8)
    out = augment_batch(batch, dataclasses.replace(IDENTITY, brightness=0.2), gen(0))
    factors = out["left"].view(B, -1) / 100.0
    torch.testing.assert_close(factors.min(1).values, factors.max(1).values)  # one factor per image
    assert factors.min() >= 0.8 - 1e-5 and factors.max() <= 1.2 + 1e-5
    assert factors[:, 0].unique().numel() == B


def test_blur_smooths_and_preserves_constant_images() -> None:
    checker = ((torch.arange(S)[:, None] + torch.arange(S)[None, :]) % 2 * 255).float().expand(2, 3, S, S)
    blurred = gaussian_blur(checker, torch.tensor([1.0, 1.5]))
    assert blurred.std() < checker.std() / 4
    flat = torch.full((2, 3, S, S), 77.0)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([0.1, 1.5])), flat)
    batch = make_batch()
    out = augment_batch(batch, dataclasses.replace(IDENTITY, blur_prob=1.0), gen(0))
    assert not torch.allclose(out["left"], batch["left"].float(), atol=1.0)


def test_crop_and_rotation_change_the_image_and_fill_black() -> None:
    batch = make_batch()
    batch["left"] = torch.full((B, 3, S, S), 200, dtype=torch.uint8)
    out = augment_batch(batch, dataclasses.replace(IDENTITY, rotation=45.0, scale_min=0.9), gen(0))
    corners = out["left"][:, :, 0, 0]
    # A rotated uniform square turns black corners in (zero padding), its centre stays 200.
    assert (corners < 200).any()
    torch.testing.assert_close(out["left"][:, :, S // 2, S // 2], torch.full((B, 3), 200.0))


def test_normalize_and_eval_transform() -> None:
    x = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 2, 2) * 255.0
    torch.testing.assert_close(normalize(x), torch.zeros(3, 2, 2))
    y = normalize(torch.full((1, 3, 2, 2), 255.0))
    expected = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(y[0, :, 0, 0], expected)
    as_tensors = normalize(
        torch.full((1, 3, 2, 2), 255.0), torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    )
    torch.testing.assert_close(as_tensors, y)
    batch = make_batch()
    out = eval_transform(batch)
    assert out["left"].dtype == torch.float32 and torch.equal(out["left"], batch["left"].float())
    assert out["left_present"] is batch["left_present"]


@pytest.mark.parametrize(
    "field, value",
    [("scale_min", 0.0), ("ratio_max", 0.5), ("brightness", 1.0), ("eye_dropout", 1.5), ("flip", "hflip")],
)
def test_bad_settings_name_the_option(field: str, value: object) -> None:
    cfg = dataclasses.replace(AugmentConfig(), **{field: value})
    with pytest.raises(ConfigError, match=f"augment.{field}"):
        check_augment_config(cfg)
    with pytest.raises(ConfigError):
        augment_batch(make_batch(), cfg)
