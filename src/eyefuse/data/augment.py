"""Training augmentation on whole batches, each eye with its own random parameters.

Written once on batched tensors so that the same code runs on the CPU (tests, small runs) and on
CUDA (the trainer moves the uint8 batch to the GPU first and augments there). Per image, in order:

1. laterality flip (`augment.flip`): `mirror_swap` mirrors *both* eyes of a patient horizontally and
   swaps them, so a mirrored left eye (which looks like a right eye) enters the right branch; the
   presence flags and per-eye labels move with the images, the patient labels stay. `none` never flips.
2. random resized crop (area fraction in `[scale_min, 1]`, aspect ratio in `[1/ratio_max, ratio_max]`)
   and rotation (uniform in `+-rotation` degrees), one affine warp (`F.affine_grid` + `F.grid_sample`,
   bilinear, zero padding, so the corners turned in are black like the field-of-view border). The
   mirror of step 1 is folded into the same warp.
3. colour jitter: brightness, contrast, saturation multipliers in `[1 - s, 1 + s]` (torchvision's
   definitions, applied in that fixed order, clamped to [0, 255] after each).
4. Gaussian blur with probability `blur_prob` (7-tap separable kernel, sigma uniform in [0.1, 1.5] px).
5. eye dropout: with probability `eye_dropout`, one eye of a patient with both eyes present (left or
   right with equal chance) is zeroed and flagged absent, so the model learns to cope with one eye.

Randomness: every random number is drawn from `generator` (a `torch.Generator` on the batch's device)
in a fixed order and amount that depends only on the batch size, so a run is reproducible for a seed
on a given device type. CPU and CUDA generators give different streams, hence different (equally
distributed) augmentations. Without a generator torch's global RNG of that device is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eyefuse.config import AugmentConfig
from eyefuse.errors import ConfigError
from eyefuse.registry import FLIP

#: Range of the Gaussian blur sigma, in pixels, and the kernel radius that covers it to 2 sigma.
BLUR_SIGMA: tuple[float, float] = (0.1, 1.5)
BLUR_RADIUS: int = 3

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)

# Pairs of per-eye keys swapped together by the laterality flip (only those present in the batch).
_EYE_PAIRS = (("left", "right"), ("left_present", "right_present"), ("left_labels", "right_labels"))


def check_augment_config(cfg: AugmentConfig) -> None:
    """Raise `ConfigError` naming the option if an augmentation setting is out of range."""
    if not 0.0 < cfg.scale_min <= 1.0:
        raise ConfigError(f"augment.scale_min must be in (0, 1], not {cfg.scale_min}")
    if cfg.ratio_max < 1.0:
        raise ConfigError(f"augment.ratio_max must be at least 1, not {cfg.ratio_max}")
    if not 0.0 <= cfg.rotation <= 180.0:
        raise ConfigError(f"augment.rotation must be between 0 and 180 degrees, not {cfg.rotation}")
    for name in ("brightness", "contrast", "saturation"):
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"augment.{name} must be in [0, 1), not {value}")
    for name in ("blur_prob", "flip_prob", "eye_dropout"):
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"augment.{name} is a probability and must be in [0, 1], not {value}")
    FLIP.check(cfg.flip)


def eval_transform(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The evaluation counterpart of `augment_batch`: images to float32 (0..255), nothing else changed."""
    out = dict(batch)
    out["left"] = batch["left"].float()
    out["right"] = batch["right"].float()
    return out


def augment_batch(
    batch: dict[str, torch.Tensor], cfg: AugmentConfig, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Augment a batch of patients (see the module docstring for the steps and the randomness).

    Args:
        batch: a collated `PairDataset` batch (or `TensorCache.batch`): `left`/`right` uint8 or float
            (0..255) `B x 3 x S x S`, `left_present`/`right_present` bool `B`, and optionally
            `left_labels`/`right_labels` `B x L` and `eye_labels_known` bool `B x 2`.
        cfg: the augmentation settings.
        generator: source of all random numbers; must live on the batch's device.

    Returns:
        A new dict with every key of `batch`; `left`/`right` are float32 `B x 3 x S x S` in [0, 255],
        and the per-eye keys are swapped and dropped consistently with the images. Absent eyes are zero.
    """
    check_augment_config(cfg)
    left, right = batch["left"], batch["right"]
    if left.dim() != 4 or left.shape != right.shape or left.shape[1] != 3 or left.shape[2] != left.shape[3]:
        raise ValueError(
            "left/right must be square B x 3 x S x S images of the same shape, "
            f"got {tuple(left.shape)} and {tuple(right.shape)}"
        )
    device = left.device
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device} but the batch is on {device}")
    b, _, size, _ = left.shape
    n = 2 * b  # one set of parameters per eye image

    def rand(count: int) -> torch.Tensor:
        return torch.rand(count, generator=generator, device=device)

    def uniform(count: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * rand(count)

    # Every random number is drawn here, in a fixed order and amount, whatever the settings.
    u_flip, u_drop, u_drop_side = rand(b), rand(b), rand(b)
    area = uniform(n, cfg.scale_min, 1.0)
    log_ratio = uniform(n, -math.log(cfg.ratio_max), math.log(cfg.ratio_max))
    u_cx, u_cy = rand(n), rand(n)
    angle = uniform(n, -cfg.rotation, cfg.rotation) * (math.pi / 180.0)
    bright = uniform(n, 1.0 - cfg.brightness, 1.0 + cfg.brightness).view(n, 1, 1, 1)
    contrast = uniform(n, 1.0 - cfg.contrast, 1.0 + cfg.contrast).view(n, 1, 1, 1)
    saturation = uniform(n, 1.0 - cfg.saturation, 1.0 + cfg.saturation).view(n, 1, 1, 1)
    u_blur = rand(n)
    sigma = uniform(n, *BLUR_SIGMA)

    out = dict(batch)

    # 1. laterality: swap the per-eye entries of flipped patients; the mirror is done by the warp below.
    flip = (
        (u_flip < cfg.flip_prob)
        if cfg.flip == "mirror_swap"
        else torch.zeros(b, dtype=torch.bool, device=device)
    )
    for a, c in _EYE_PAIRS:
        if a in out and c in out:
            fa = flip.view(-1, *([1] * (out[a].dim() - 1)))
            out[a], out[c] = torch.where(fa, out[c], out[a]), torch.where(fa, out[a], out[c])
    if "eye_labels_known" in out:
        out["eye_labels_known"] = torch.where(
            flip[:, None], out["eye_labels_known"].flip(1), out["eye_labels_known"]
        )

    # Both eyes as one batch of 2B images, image 2i + k being eye k (0 left, 1 right) of patient i.
    x = torch.stack((out["left"], out["right"]), 1).reshape(n, 3, size, size).float()
    mirror = flip.repeat_interleave(2)

    # 2. crop + rotation (+ mirror) as one affine map from output to input coordinates in [-1, 1].
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # half-width of the crop, as a fraction of the half-side
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (2.0 * u_cx - 1.0) * (1.0 - w)  # crop centre, keeping the crop inside the image
    cy = (2.0 * u_cy - 1.0) * (1.0 - h)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        (torch.stack((cos * w, -sin * h, cx), 1), torch.stack((sin * w, cos * h, cy), 1)), 1
    )  # n x 2 x 3
    # Mirroring the input image negates its x coordinate: theta's first row changes sign.
    theta[:, 0] *= torch.where(mirror, -1.0, 1.0).to(theta.dtype)[:, None]
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # 3. colour jitter.
    x = (x * bright).clamp_(0.0, 255.0)
    mean_gray = _grayscale(x).mean(dim=(-2, -1), keepdim=True)
    x = ((x - mean_gray) * contrast + mean_gray).clamp_(0.0, 255.0)
    gray = _grayscale(x)
    x = ((x - gray) * saturation + gray).clamp_(0.0, 255.0)

    # 4. blur of the chosen images.
    if cfg.blur_prob > 0.0:
        blur = u_blur < cfg.blur_prob
        if device.type == "cpu":
            chosen = torch.nonzero(blur).squeeze(1)
            if chosen.numel():
                x[chosen] = gaussian_blur(x[chosen], sigma[chosen])
        else:
            # On an accelerator blurring every image and keeping the chosen ones is cheap, while
            # finding the chosen ones (nonzero) would make the host wait for the device every step.
            x = torch.where(blur.view(n, 1, 1, 1), gaussian_blur(x, sigma), x)

    x = x.view(b, 2, 3, size, size)

    # 5. eye dropout, only where both eyes are present.
    present = torch.stack((out["left_present"], out["right_present"]), 1).bool()
    drop = (u_drop < cfg.eye_dropout) & present.all(1)
    drop_left = u_drop_side < 0.5
    dropped = torch.stack((drop & drop_left, drop & ~drop_left), 1)  # B x 2
    present = present & ~dropped
    if "eye_labels_known" in out:
        out["eye_labels_known"] = out["eye_labels_known"] & ~dropped
    for k, key in enumerate(("left_labels", "right_labels")):
        if key in out:
            out[key] = torch.where(dropped[:, k, None], torch.zeros_like(out[key]), out[key])

    # An absent eye stays exactly zero whatever the colour jitter did to the black image.
    x = x * present.view(b, 2, 1, 1, 1)
    out["left"] = x[:, 0].contiguous()
    out["right"] = x[:, 1].contiguous()
    out["left_present"] = present[:, 0]
    out["right_present"] = present[:, 1]
    return out


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of `n x 3 x H x W` images as `n x 1 x H x W`."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = BLUR_RADIUS) -> torch.Tensor:
    """Blur each image of `x` (`m x C x H x W`, float) with its own Gaussian `sigma` (`m`, pixels).

    A separable kernel of `2 * radius + 1` taps, normalized to sum 1, with reflected borders.
    """
    m, c, height, width = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(taps[None, :] ** 2) / (2.0 * sigma.to(x.dtype)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (m * C) x K
    k = 2 * radius + 1
    # Grouped convolution: every channel of every image is its own group with its own kernel.
    y = F.pad(x.reshape(1, m * c, height, width), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(m * c, 1, 1, k), groups=m * c)
    y = F.conv2d(y, kernel.view(m * c, 1, k, 1), groups=m * c)
    return y.view(m, c, height, width)


__all__ = [
    "augment_batch",
    "check_augment_config",
    "eval_transform",
    "gaussian_blur",
]
