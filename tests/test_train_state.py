"""The books `fit` keeps between epochs (`eyefuse.train.state`): the best epoch by
`train.select_metric`, the early-stopping count, and the round trip through `last` that a resumed run
relies on: `setup_run` + `save_epoch` write it, a fresh `setup_run` + `resume_state` read it back.
No training: the epochs' figures are made up and the weights are moved by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eyefuse.config import load_config
from eyefuse.errors import ConfigError
from eyefuse.train.distributed import DistInfo
from eyefuse.train.setup import setup_run
from eyefuse.train.state import TrainState, resume_state, save_epoch, selection_score

NAN = float("nan")


def _row(epoch: int, auroc: float) -> dict[str, float]:
    """A metrics row as `run_epoch` returns it (validation figures made up)."""
    return {
        "epoch": epoch + 1,
        "train_loss": 1.0 / (epoch + 1),
        "val_loss": 0.5,
        "val_kappa": 0.1,
        "val_f1": 0.2,
        "val_auc": 0.3,
        "val_final": 0.2,
        "val_macro_auroc": auroc,
        "lr": 0.001,
        "epoch_time_s": 1.0,
        "train_images_per_s": 10.0,
    }


def test_record_keeps_the_best_epoch_and_counts_epochs_without_progress() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0))
    # undefined first epoch, better, worse, better, a tie, undefined again
    figures = [NAN, 0.5, 0.4, 0.6, 0.6, NAN]
    improved = [
        state.record(e, _row(e, f), selection_score(_row(e, f), "val_macro_auroc"))
        for e, f in enumerate(figures)
    ]
    # the first epoch is the best so far even when undefined, so a run always leaves a `best`; a tie
    # is no progress, and an undefined figure later never becomes the best
    assert improved == [True, True, False, True, False, False]
    assert (state.epoch, state.best_epoch, state.best_score, state.bad_epochs) == (5, 3, 0.6, 2)
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4, 5, 6]
    lossy = TrainState(model, optimizer, state.scheduler)
    for e, loss in enumerate([0.9, 0.7, 0.8]):
        lossy.record(e, {}, selection_score({"val_loss": loss}, "val_loss"))  # lower loss is better
    assert (lossy.best_epoch, lossy.best_score, lossy.bad_epochs) == (1, -0.7, 1)


@pytest.fixture
def tiny_run(tmp_path: Path, make_challenge, odir_row) -> tuple[Path, list[str]]:
    normal = ("normal fundus", "normal fundus", "N")
    diabetic = ("normal fundus", "moderate non proliferative retinopathy", "D")
    rows = [odir_row(i, *(diabetic if i % 2 else normal)) for i in range(10)]
    root = make_challenge(tmp_path / "data", rows)
    split = tmp_path / "split.csv"
    split.write_text(
        "patient_id,split\n" + "".join(f"{i},{'train' if i < 6 else 'val'}\n" for i in range(10))
    )
    sets = [
        "preprocess.size=32",
        "model.backbone=resnet10t",
        "model.pretrained=false",
        "train.device=cpu",
        "train.num_workers=0",
        "train.batch_size=4",
        "train.epochs=6",
        "train.ema=true",
        "train.early_stop_patience=2",
        "train.select_metric=val_macro_auroc",
        f"data.split_file={split}",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    return root, sets


def _step(state: TrainState) -> None:
    """Move the weights, the optimiser's moments, the schedule and the EMA, as a training step does."""
    loss = sum((p.float() ** 2).sum() for p in state.model.parameters())
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    state.ema.update(state.model)


def test_save_epoch_writes_best_last_and_stops_early_and_resume_reads_it_back(
    tiny_run: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, sets = tiny_run
    cfg = load_config("demo", sets)
    cfg.data.root = str(root)
    run_dir = tmp_path / "run"
    run, state = setup_run(cfg, run_dir, DistInfo(), resume=False, progress=False)
    assert state.ema is not None and state.scaler is None and (run_dir / "config.yaml").is_file()
    meta_base = {"label_names": list(run.data.label_names)}
    stops, ema_at_best = [], None
    for epoch, auroc in enumerate([0.6, 0.7, 0.65, 0.7]):  # best at epoch 2, then two without progress
        _step(state)
        stops.append(save_epoch(run, state, _row(epoch, auroc), meta_base, writer=None))
        if epoch == 1:
            ema_at_best = {k: v.clone() for k, v in state.ema.module.state_dict().items()}
    assert stops == [False, False, False, True]  # patience 2

    best = json.loads((run_dir / "best" / "meta.json").read_text())
    last = json.loads((run_dir / "last" / "meta.json").read_text())
    assert (best["epoch"], best["kind"], best["val"]["val_macro_auroc"]) == (2, "best", 0.7)
    assert (last["epoch"], last["kind"]) == (4, "last")
    best_weights = load_file(str(run_dir / "best" / "model.safetensors"))  # the EMA's, from epoch 2
    assert all(torch.equal(best_weights[k], v) for k, v in ema_at_best.items())
    with open(run_dir / "metrics.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3", "4"]

    with pytest.raises(ConfigError, match="already holds a run"):
        setup_run(cfg, run_dir, DistInfo(), resume=False, progress=False)
    _, resumed = setup_run(cfg, run_dir, DistInfo(), resume=True, progress=False)
    fresh = zip(resumed.model.parameters(), state.model.parameters(), strict=True)
    assert not all(torch.equal(a, b) for a, b in fresh)  # step 0's weights until resume_state
    resume_state(resumed, run_dir / "last")
    assert (resumed.epoch, resumed.best_epoch, resumed.best_score, resumed.bad_epochs) == (3, 1, 0.7, 2)
    assert resumed.history == state.history
    for got, want in ((resumed.model, state.model), (resumed.ema.module, state.ema.module)):
        mine, theirs = got.state_dict(), want.state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert resumed.scheduler.state_dict()["last_epoch"] == state.scheduler.state_dict()["last_epoch"] == 4
    moments = list(resumed.optimizer.state_dict()["state"].values())
    expected = list(state.optimizer.state_dict()["state"].values())
    assert len(moments) == len(expected) > 0
    for a, b in zip(moments, expected, strict=True):
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(b[k]) else a[k] == b[k] for k in b)


def test_fit_result_states_wall_and_cpu_time() -> None:
    from eyefuse.train.engine import FitResult

    result = FitResult(Path("run"), 0, 0.5, "val_macro_auroc", 1, [], False, seconds=90.0, cpu_seconds=150.0)
    assert "time: 1.5 min wall, 2.5 CPU-minutes" in str(result)
