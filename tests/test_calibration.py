"""Tests of eyefuse.eval.calibration: temperature scaling recovers a known miscalibration, and the
calibration error and reliability curve are computed as defined."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax

from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.calibration import (
    apply_temperatures,
    expected_calibration_error,
    fit_softmax_temperature,
    fit_temperatures,
    per_class_ece,
    reliability_curve,
)


def _miscalibrated(scales: tuple[float, ...], n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(true logits); the model's logits are the true ones times `scales`."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 1.5, size=(n, len(scales)))
    truth = (rng.random(true_logits.shape) < expit(true_logits)).astype(np.uint8)
    return truth, true_logits * np.asarray(scales)


def test_temperatures_recover_a_known_scaling() -> None:
    truth, logits = _miscalibrated((3.0, 0.5, 1.0))
    fit = fit_temperatures(truth, logits)
    np.testing.assert_allclose(fit.temperatures, [3.0, 0.5, 1.0], rtol=0.08)
    assert not fit.warnings
    assert np.all(fit.nll_after <= fit.nll_before + 1e-12)
    np.testing.assert_array_equal(np.asarray(fit), fit.temperatures)  # usable as the array itself


def test_calibration_lowers_the_calibration_error() -> None:
    truth, logits = _miscalibrated((3.0, 0.4))
    fit = fit_temperatures(truth, logits)
    before = expected_calibration_error(truth, expit(logits))
    after = expected_calibration_error(truth, expit(apply_temperatures(logits, fit)))
    assert after < before / 2
    calibrated = expit(apply_temperatures(logits, fit))
    assert np.all(per_class_ece(truth, calibrated) < per_class_ece(truth, expit(logits)))


def test_degenerate_class_keeps_temperature_one_with_a_warning() -> None:
    truth, logits = _miscalibrated((2.0, 2.0), n=2000)
    truth[:, 1] = 0
    fit = fit_temperatures(truth, logits, label_names=["D", "H"])
    assert fit.temperatures[1] == 1.0
    assert len(fit.warnings) == 1 and fit.warnings[0].startswith("class H: 0 positive")
    assert fit.to_dict()["temperatures"][1] == 1.0


def test_apply_temperatures_divides_and_checks() -> None:
    logits = np.array([[2.0, -4.0], [1.0, 8.0]])
    np.testing.assert_allclose(apply_temperatures(logits, [2.0, 4.0]), [[1.0, -1.0], [0.5, 2.0]])
    np.testing.assert_allclose(apply_temperatures(logits, 2.0), logits / 2)
    with pytest.raises(DataError, match="positive"):
        apply_temperatures(logits, [1.0, 0.0])
    with pytest.raises(DataError, match="per-class"):
        apply_temperatures(logits, [1.0, 2.0, 3.0])


def test_fit_refuses_probabilities_with_nan_and_bad_bounds() -> None:
    truth, logits = _miscalibrated((1.0,), n=50)
    logits[0, 0] = np.nan
    with pytest.raises(DataError, match="logits has 1 NaN/infinite value.*patient 0, label 0"):
        fit_temperatures(truth, logits)
    logits[0, 0] = 7.5  # logits are any finite number (only probabilities must lie in [0, 1])
    assert fit_temperatures(truth, logits) is not None
    with pytest.raises(ConfigError):
        fit_temperatures(truth, np.zeros_like(logits), bounds=(2.0, 3.0))


def test_softmax_temperature_recovers_a_known_scaling() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0.0, 1.5, size=(6000, 4))
    p = softmax(true_logits, axis=1)
    labels = np.array([rng.choice(4, p=row) for row in p])
    truth = np.eye(4, dtype=np.uint8)[labels]
    assert fit_softmax_temperature(truth, 2.5 * true_logits) == pytest.approx(2.5, rel=0.08)
    with pytest.raises(DataError, match="no patient"):
        fit_softmax_temperature(np.zeros_like(truth), true_logits)


def test_expected_calibration_error_by_hand() -> None:
    # Bin [0.2, 0.4): predicted 0.3, observed 1/4 -> gap 0.05 over 4 entries;
    # bin [0.8, 1.0]: predicted 0.9 and 1.0 (mean 0.95), observed 1 -> gap 0.05 over 2 entries.
    truth = np.array([1, 0, 0, 0, 1, 1])
    prob = np.array([0.3, 0.3, 0.3, 0.3, 0.9, 1.0])
    assert expected_calibration_error(truth, prob, n_bins=5) == pytest.approx((4 * 0.05 + 2 * 0.05) / 6)
    perfectly = np.array([0.25] * 4)
    assert expected_calibration_error(np.array([1, 0, 0, 0]), perfectly, n_bins=10) == pytest.approx(0.0)
    with pytest.raises(ConfigError):
        expected_calibration_error(truth, prob, n_bins=0)


def test_reliability_curve() -> None:
    truth = np.array([1, 0, 0, 0, 1, 1])
    prob = np.array([0.3, 0.3, 0.3, 0.3, 0.9, 1.0])
    curve = reliability_curve(truth, prob, n_bins=5)
    assert curve["bin_centers"] == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert curve["counts"] == [0, 4, 0, 0, 2]
    assert curve["accuracy"][1] == pytest.approx(0.25) and curve["accuracy"][4] == pytest.approx(1.0)
    assert curve["confidence"][4] == pytest.approx(0.95)
    assert curve["accuracy"][0] is None and curve["confidence"][2] is None


def test_fit_calibration_matches_what_predict_applies() -> None:
    """The fields a checkpoint stores are read back by predict into the same probabilities."""
    import torch

    from eyefuse.config import EvalConfig
    from eyefuse.eval.calibration import fit_calibration
    from eyefuse.models.checkpoint import CheckpointMeta, calibrated_probabilities

    rng = np.random.default_rng(0)
    truth = (rng.random((80, 4)) < 0.3).astype(int)
    truth[np.arange(80), rng.integers(0, 4, 80)] = 1  # every patient has a label (softmax targets)
    logits = 3.0 * (truth - 0.5) + rng.normal(0, 1.5, truth.shape)
    for head, n_temps in (("sigmoid", 4), ("softmax", 1)):
        fields = fit_calibration(truth, logits, head=head, cfg=EvalConfig(threshold_method="youden"))
        assert len(fields["temperatures"]) == n_temps and len(fields["thresholds"]) == 4
        assert fields["threshold_method"] == "youden"
        ours = calibrated_probabilities(logits, head, fields["temperatures"])
        meta = CheckpointMeta.from_dict(
            {"label_names": list("ABCD"), "head": head, "temperatures": fields["temperatures"]}
        )
        # What predict does: torch logits with the temperatures as the stored metadata reads back.
        theirs = calibrated_probabilities(torch.from_numpy(logits), meta.head, meta.temperature_array())
        theirs = theirs.numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-12)
        assert not np.allclose(ours, calibrated_probabilities(logits, head))  # temperatures did something
