"""The training engine on a tiny synthetic dataset: loss goes down, a killed run resumes to the same
weights, a finished run can be extended, DDP with gloo keeps the ranks identical."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eyefuse.config import load_config
from eyefuse.errors import ConfigError
from helpers import TINY_EPOCHS, TINY_SETS, set_args

TINY = TINY_SETS


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # identical kernels in every process, so runs can be compared bit for bit
    env.pop("EYEFUSE_FAULT_KILL_AT_STEP", None)
    return env


def _train(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _train_together((args, env))[0]


def _train_together(*runs: tuple[list[str], dict[str, str] | None]) -> list[subprocess.CompletedProcess[str]]:
    """Several independent `eyefuse train` processes at once (one thread each, so two fit the
    2-core CI machine side by side); their results in the order given."""
    cmd = [sys.executable, "-m", "eyefuse", "train", "--no-progress"]
    procs = [
        subprocess.Popen(
            [*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or _env()
        )
        for args, env in runs
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _sets(extra: list[str]) -> list[str]:
    return set_args([*TINY, *extra])


@pytest.mark.slow
def test_training_lowers_the_loss(synth_dataset: Path, tmp_path: Path) -> None:
    from eyefuse.data.augment import eval_transform
    from eyefuse.data.dataset import PairDataset
    from eyefuse.models import build_model
    from eyefuse.models.inputs import model_inputs
    from eyefuse.train import engine
    from eyefuse.train.distributed import DistInfo
    from eyefuse.train.losses import create_loss
    from eyefuse.train.run_data import epoch_batches, load_run_data, make_loader
    from eyefuse.train.setup import build_optimizer, build_scheduler

    overrides = [*TINY, "train.epochs=6", "train.warmup_epochs=0", "train.lr=0.003", "model.drop_rate=0"]
    cfg = load_config("demo", [*overrides, "augment.eye_dropout=0", "augment.flip=none"])
    cfg.data.root = str(synth_dataset)
    data = load_run_data(cfg, tmp_path, DistInfo(), progress=False)
    train_set = PairDataset(data.splits["train"], data.loader, data.label_names, size=64)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.label_names)
    labels = np.stack([p.labels for p in data.splits["train"]]).astype(np.float32)
    criterion = create_loss(cfg.loss, cfg.model.head, labels)
    device = torch.device("cpu")
    batches = epoch_batches(len(train_set), 8, 0, 0, DistInfo())

    @torch.no_grad()
    def training_loss() -> float:
        # batch statistics, as in training: a few steps from scratch leave BatchNorm's running
        # statistics far from converged, which says nothing about whether the loss fell
        model.train()
        total = 0.0
        for batch in make_loader(train_set, batches, 0, device):
            batch = eval_transform(batch)
            left, right = model_inputs(model, batch["left"], batch["right"])
            out = model(left, right, batch["left_present"], batch["right_present"])
            total += engine.compute_loss(out, batch, criterion, cfg).item()
        return total / len(batches)

    before = training_loss()
    optimizer = build_optimizer(model, cfg, backbone_pretrained=False)
    scheduler = build_scheduler(optimizer, cfg, len(batches))
    # From scratch, AdamW's first steps overshoot (the loss rises in epoch 1); a few epochs of 4
    # steps bring it clearly below where it started.
    for epoch in range(6):
        loader = make_loader(train_set, batches, 0, device)
        engine.train_one_epoch(
            model, criterion, optimizer, scheduler, loader, device, epoch, cfg, DistInfo(), progress=False
        )
    after = training_loss()
    assert after < before * 0.95, (before, after)


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(
    synth_dataset: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """`tiny_run` (an uninterrupted `eyefuse train` run) is the reference: `eyefuse train` processes
    with the same settings, killed mid-run and resumed, end with its weights and its metrics."""
    common = ["--data", str(synth_dataset), "--config", "demo", *_sets([f"train.epochs={TINY_EPOCHS}"])]
    assert (tiny_run / "metrics.csv").read_text().count("\n") == 4  # header + 3 epochs

    from eyefuse.data.splits import read_split
    from eyefuse.train.distributed import DistInfo
    from eyefuse.train.run_data import epoch_batches

    n_train = sum(1 for split in read_split(tiny_run / "split.csv").values() if split == "train")
    steps = len(epoch_batches(n_train, 8, 0, 0, DistInfo()))
    assert steps >= 3
    # killed in the middle of epoch 2, and killed in its first epoch before any checkpoint (then
    # --resume starts again from step 0 with the saved config and split): both end with the
    # uninterrupted run's weights. Beside them, a copy of the finished run is extended by one epoch.
    # The runs are independent, so they run side by side.
    full = tmp_path / "full"
    shutil.copytree(tiny_run, full)
    env, env1 = _env(), _env()
    env["EYEFUSE_FAULT_KILL_AT_STEP"] = str(steps + 2)
    env1["EYEFUSE_FAULT_KILL_AT_STEP"] = "2"
    killed, killed1, extended = _train_together(
        ([*common, "--out", str(tmp_path / "killed")], env),
        ([*common, "--out", str(tmp_path / "killed1")], env1),
        (["--resume", str(full), "--set", "train.epochs=4"], None),
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (tmp_path / "killed" / "last" / "meta.json").is_file()
    assert killed1.returncode == -9, killed1.stderr[-3000:]
    assert not (tmp_path / "killed1" / "last").exists() and (tmp_path / "killed1" / "config.yaml").is_file()
    resumed, resumed1 = _train_together(
        (["--resume", str(tmp_path / "killed")], None), (["--resume", str(tmp_path / "killed1")], None)
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "epoch 2/3" in resumed.stdout
    assert "precision: " in resumed.stdout  # which precision train.amp resolved to, said once
    assert resumed1.returncode == 0, resumed1.stderr[-3000:]
    assert "no checkpoint yet" in resumed1.stdout

    a = load_file(str(tiny_run / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_rows = [r.split(",")[:8] for r in (tiny_run / "metrics.csv").read_text().splitlines()]
    resumed_rows = [r.split(",")[:8] for r in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()]
    assert full_rows == resumed_rows

    c = load_file(str(tmp_path / "killed1" / "last" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], c[k]), k

    # the finished run, extended by one epoch
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert (full / "metrics.csv").read_text().count("\n") == 5
    # the fitted calibration lives in best
    from eyefuse.models.checkpoint import read_meta

    meta = read_meta(full / "best")
    assert len(meta["thresholds"]) == 8 and meta["calibration_split"]["name"] == "val"


def test_resume_refuses_model_changes(tmp_path: Path) -> None:
    from eyefuse.config import save_config
    from eyefuse.train.engine import prepare_resume

    save_config(load_config("demo"), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="cannot change a run being resumed"):
        prepare_resume(tmp_path, ["model.fusion=concat"])
    assert prepare_resume(tmp_path, ["train.epochs=20"]).train.epochs == 20


def test_existing_run_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eyefuse.cli import main

    (tmp_path / "run" / "last").mkdir(parents=True)
    (tmp_path / "data").mkdir()  # refused before the dataset is read
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    rc = main([*argv, *_sets(["train.epochs=1"])])
    assert rc == 2 and "already holds a run" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last"]  # nothing written into it


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_ddp_two_cpu_processes(synth_dataset: Path, tmp_path: Path) -> None:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "eyefuse",
        "train",
        "--no-progress",
        "--data",
        str(synth_dataset),
        "--out",
        str(tmp_path / "ddp"),
        *_sets(["train.epochs=1"]),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "all 2 ranks hold identical weights and buffers" in out.stdout
    assert (tmp_path / "ddp" / "best" / "model.safetensors").is_file()


@pytest.mark.slow
def test_fit_with_ema_sgd_workers_and_early_stopping(synth_dataset: Path, tmp_path: Path) -> None:
    from eyefuse.models.checkpoint import read_meta
    from eyefuse.train.checkpoint import load_train_state
    from eyefuse.train.engine import fit

    cfg = load_config(
        "demo",
        [
            *TINY,
            "train.epochs=4",
            "train.ema=true",
            "train.ema_decay=0.9",
            "train.optimizer=sgd",
            "train.warmup_epochs=0",
            "train.num_workers=1",
            "train.early_stop_patience=1",
            "model.fusion=cross_attention",
            "model.aux_eye_heads=true",
        ],
    )
    cfg.data.root = str(synth_dataset)
    result = fit(cfg, tmp_path / "run", progress=False)
    assert result.seconds > 0 and result.cpu_seconds > 0 and "CPU-minutes" in str(result)
    assert cfg.train.select_metric == "val_macro_auroc"  # the default chooses the best checkpoint
    finals = [row["val_macro_auroc"] for row in result.history]
    # patience 1: the run ends right after the first epoch that does not beat the best so far
    first_bad = next((i for i in range(1, len(finals)) if finals[i] <= max(finals[:i])), None)
    expected_epochs = 4 if first_bad is None else first_bad + 1
    assert result.epochs_run == expected_epochs and result.stopped_early == (first_bad is not None)
    assert result.best_epoch == int(np.argmax(finals))
    state = load_train_state(tmp_path / "run" / "last")
    assert state["ema"] is not None
    assert read_meta(tmp_path / "run" / "best")["epoch"] == result.best_epoch + 1
    assert any(
        (tmp_path / "run" / "tensorboard").iterdir()
    )  # the tensorboard extra is installed in make test
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == expected_epochs + 1


@pytest.mark.parametrize("n", [30, 31, 37, 40])
def test_epoch_batches_split_the_epoch_between_ranks(n: int) -> None:
    """Two ranks get equally many batches (DDP needs every rank to take every step), disjoint parts
    of the epoch apart from the padding that evens them out, together covering every patient; step k
    of the two ranks together is step k of one process with twice the batch."""
    from eyefuse.train.distributed import DistInfo
    from eyefuse.train.run_data import epoch_batches

    for epoch in range(3):
        ranks = [epoch_batches(n, 4, 7, epoch, DistInfo(rank=r, world_size=2)) for r in range(2)]
        assert len(ranks[0]) == len(ranks[1])
        seen = [[i for b in batches for i in b] for batches in ranks]
        pad = n % 2
        assert len(seen[0]) + len(seen[1]) == n + pad
        assert set(seen[0]) | set(seen[1]) == set(range(n))
        shared = set(seen[0]) & set(seen[1])
        assert len(shared) == pad and all(len(set(s)) == len(s) for s in seen)
        single = epoch_batches(n, 8, 7, epoch, DistInfo())
        if not pad:
            assert [set(a) | set(b) for a, b in zip(*ranks, strict=True)] == [set(b) for b in single]


@pytest.mark.slow
@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed")
def test_ddp_two_ranks_equal_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    """2 gloo ranks with batch b end with the weights of one process with batch 2b (SGD, 2 epochs).

    BatchNorm: each rank normalises with its own b samples' statistics (plain BatchNorm, as the
    trainer uses; SyncBatchNorm needs CUDA), so the one-process reference with BatchNorm normalises
    each half of its 2b batch separately and averages the halves' losses (ghost batches of b). The
    variant without BatchNorm is compared with the plain batch of 2b. Tolerance 1e-5 (float32 sums
    in another order). Afterwards the ranks' BatchNorm buffers differ (each saw its own batches)
    until `broadcast_buffers` gives every rank rank 0's."""
    sys.path.insert(0, str(Path(__file__).parent))
    import ddp_equivalence_worker as worker
    from eyefuse.train.distributed import DistInfo
    from eyefuse.train.run_data import epoch_batches

    cmd = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nproc_per_node",
        "2",
        "--master_port",
        "29541",
        str(Path(__file__).with_name("ddp_equivalence_worker.py")),
        str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x, y = worker.data()
    for variant in ("bn", "plain"):
        torch.manual_seed(0)
        model = worker.tiny_net(variant == "bn")
        opt = torch.optim.SGD(model.parameters(), lr=worker.LR, momentum=0.9)
        for epoch in range(worker.EPOCHS):
            halves = [rank[f"{variant}_batches"][epoch] for rank in ranks]
            single = epoch_batches(worker.N, 2 * worker.BATCH, 0, epoch, DistInfo())
            assert [sorted(a + b) for a, b in zip(*halves, strict=True)] == [sorted(b) for b in single]
            for a, b in zip(*halves, strict=True):
                if variant == "bn":
                    ce = torch.nn.functional.cross_entropy
                    loss = (ce(model(x[a]), y[a]) + ce(model(x[b]), y[b])) / 2
                else:
                    loss = torch.nn.functional.cross_entropy(model(x[a + b]), y[a + b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        for name, p in model.named_parameters():
            for rank in ranks:
                assert torch.allclose(rank[f"{variant}_weights"][name], p.detach(), atol=1e-5, rtol=0), name
        assert ranks[0][f"{variant}_checksum"] == ranks[1][f"{variant}_checksum"]
    before = [r["bn_buffers_before"]["1.running_mean"] for r in ranks]
    assert not torch.equal(before[0], before[1])  # each rank's own statistics
    for r in ranks:
        for k, v in r["bn_buffers_after"].items():
            assert torch.equal(v, ranks[0]["bn_buffers_before"][k]), k


def test_non_finite_loss_is_reported_with_its_step() -> None:
    """The loss is checked on the device and read back every SYNC_EVERY steps and at the end of the
    epoch: a NaN at step 2 stops the epoch with an error naming step 2."""
    from eyefuse.errors import EyefuseError
    from eyefuse.models import build_model
    from eyefuse.train import engine
    from eyefuse.train.distributed import DistInfo
    from eyefuse.train.setup import build_optimizer, build_scheduler

    cfg = load_config("demo", [*TINY, "preprocess.size=32"])
    torch.manual_seed(0)
    model = build_model(cfg.model, tuple("NDGCAHMO"))
    gen = torch.Generator().manual_seed(0)

    def batch() -> dict[str, torch.Tensor]:
        y = (torch.rand(2, 8, generator=gen) > 0.5).float()
        return {
            "left": torch.randint(0, 256, (2, 3, 32, 32), generator=gen, dtype=torch.uint8),
            "right": torch.randint(0, 256, (2, 3, 32, 32), generator=gen, dtype=torch.uint8),
            "labels": y,
            "left_labels": y,
            "right_labels": y,
            "eye_labels_known": torch.ones(2, 2, dtype=torch.bool),
            "left_present": torch.ones(2, dtype=torch.bool),
            "right_present": torch.ones(2, dtype=torch.bool),
        }

    calls = []

    def criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return loss * float("nan") if len(calls) == 2 else loss

    optimizer = build_optimizer(model, cfg, backbone_pretrained=False)
    scheduler = build_scheduler(optimizer, cfg, 3)
    loader = [batch() for _ in range(3)]
    with pytest.raises(EyefuseError, match="loss became non-finite at epoch 1, step 2"):
        engine.train_one_epoch(
            model,
            criterion,
            optimizer,
            scheduler,
            loader,
            torch.device("cpu"),
            0,
            cfg,
            DistInfo(),
            progress=False,
        )
    assert len(calls) == 3  # no read-back (and no stop) before the end of this short epoch


def test_selection_score_orders_every_metric_higher_is_better() -> None:
    from eyefuse.train.state import selection_score

    good, bad = {"val_loss": 0.2, "val_final": 0.7}, {"val_loss": 0.5, "val_final": 0.6}
    assert selection_score(good, "val_loss") > selection_score(bad, "val_loss")
    assert selection_score(good, "val_final") > selection_score(bad, "val_final")
    # an epoch whose figure is undefined (e.g. no positives in validation) never becomes the best
    assert selection_score({"val_macro_auroc": float("nan")}, "val_macro_auroc") == float("-inf")


def test_select_metric_is_validated_and_fixed_on_resume(tmp_path: Path) -> None:
    from eyefuse.config import save_config
    from eyefuse.train.engine import prepare_resume

    with pytest.raises(ConfigError, match="train.select_metric"):
        load_config("demo", ["train.select_metric=val_accuracy"])
    save_config(load_config("demo"), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="select_metric"):
        prepare_resume(tmp_path, ["train.select_metric=val_final"])
