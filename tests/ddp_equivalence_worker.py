"""One rank of the DDP equivalence test (tests/test_train.py), launched by torchrun with 2 CPU ranks.

Trains a tiny convolutional network on fixed random data with eyefuse's `epoch_batches`, DDP over
gloo and SGD, in two variants (with and without BatchNorm), and writes what the test compares to
OUT/rank{R}.pt: the batches the rank saw, the final weights, and the BatchNorm buffers before and
after `broadcast_buffers`.

    torchrun --nproc_per_node 2 tests/ddp_equivalence_worker.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from eyefuse.train.distributed import broadcast_buffers, init_distributed, shutdown_distributed
from eyefuse.train.engine import check_replicas_identical
from eyefuse.train.run_data import epoch_batches

N, BATCH, EPOCHS, LR = 30, 4, 2, 0.1


def tiny_net(batch_norm: bool) -> nn.Module:
    """Conv -> (BatchNorm) -> ReLU -> pool -> linear, 3 classes; seeded, so every rank starts equal."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4) if batch_norm else nn.Identity(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, 6, 6, generator=gen), torch.randint(0, 3, (N,), generator=gen)


def main(out: Path) -> None:
    info = init_distributed("cpu")
    x, y = data()
    result: dict[str, object] = {"rank": info.rank}
    try:
        for variant in ("bn", "plain"):
            model = tiny_net(variant == "bn")
            ddp = nn.parallel.DistributedDataParallel(model)
            opt = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
            seen = []
            for epoch in range(EPOCHS):
                batches = epoch_batches(N, BATCH, 0, epoch, info)
                seen.append(batches)
                for idx in batches:
                    loss = nn.functional.cross_entropy(ddp(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            result[f"{variant}_batches"] = seen
            result[f"{variant}_buffers_before"] = {k: v.clone() for k, v in model.named_buffers()}
            broadcast_buffers(model, info)
            result[f"{variant}_buffers_after"] = {k: v.clone() for k, v in model.named_buffers()}
            result[f"{variant}_checksum"] = check_replicas_identical(model, info)
            result[f"{variant}_weights"] = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(result, out / f"rank{info.rank}.pt")
    finally:
        shutdown_distributed(info)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
