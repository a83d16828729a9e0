"""Helpers shared by the inference tests (predict, explain, export, the service): a tiny random
checkpoint saved like the training engine saves it, fundus-like photographs, and the real service
on a loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from eyefuse import ODIR_LABELS
from eyefuse.config import Config
from eyefuse.models import build_model
from eyefuse.train.checkpoint import checkpoint_meta, save_checkpoint

SIZE = 64

#: The one tiny backbone of the tests (timm's ResNet-10-T: one block per stage, the cheapest
#: ResNet-family model; the demo preset's backbone too).
TINY_BACKBONE = "resnet10t"

#: `--set` overrides of the demo preset for every test that trains: the tiny backbone at 64 px from
#: scratch, on the CPU, no worker processes, no early stopping. The shared `tiny_run` fixture
#: (conftest.py) trains with these for `TINY_EPOCHS` epochs.
TINY_SETS = [
    "preprocess.size=64",
    f"model.backbone={TINY_BACKBONE}",
    "model.pretrained=false",
    "model.attention=residual_attention",
    "model.fusion=ffm",
    "model.head=sigmoid",
    "train.batch_size=8",
    "train.lr=0.001",
    "train.num_workers=0",
    "train.channels_last=false",
    "train.early_stop_patience=0",
    "train.device=cpu",
    "eval.bootstrap=50",
]
TINY_EPOCHS = 3


def set_args(sets: list[str]) -> list[str]:
    """`--set` options for the command line: ["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return [arg for s in sets for arg in ("--set", s)]


def make_checkpoint(
    path: Path,
    *,
    head: str = "sigmoid",
    fusion: str = "ffm",
    attention: str = "residual_attention",
    tta: str = "none",
    **meta_fields: object,
) -> Path:
    """A checkpoint folder of a random tiny model (resnet10t, 64 px, no enhancement), with meta as
    the training engine writes it; residual-attention gates are switched on (they start at 0)."""
    cfg = Config()
    cfg.preprocess.size = SIZE
    cfg.preprocess.enhance = "none"
    cfg.model.backbone = TINY_BACKBONE
    cfg.model.pretrained = False
    cfg.model.attention = attention
    cfg.model.fusion = fusion
    cfg.model.head = head
    cfg.model.tta = tta
    torch.manual_seed(0)
    model = build_model(cfg.model, ODIR_LABELS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):  # 0 at initialisation: let the attention take part
                p.fill_(1.0)
    meta = {**checkpoint_meta(cfg, ODIR_LABELS, model), **meta_fields}
    return save_checkpoint(path, model.state_dict(), meta)


def draw_eye(path: Path, colour: tuple[int, int, int] = (40, 110, 210), spot: int = 10) -> Path:
    """A fundus-like photograph file (an orange disc on black with a pale spot); format by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(eye_image(colour, spot, ext=path.suffix))
    return path


def eye_image(
    colour: tuple[int, int, int] = (40, 110, 210), spot: int = 10, ext: str = ".jpg", scale: int = 1
) -> bytes:
    """A fundus-like photograph (orange disc on black, a pale spot, the optic disc, `spot` px left
    of the centre: where it is in a left eye, so the laterality check agrees with the default for
    left eyes and with a negative `spot` for right eyes), encoded as `ext`; `scale` enlarges it
    (96 x 112 px at 1)."""
    h, w = 96 * scale, 112 * scale
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), 42 * scale, colour, -1)
    cv2.circle(img, (w // 2 - spot * scale, h // 2 - 4 * scale), 7 * scale, (190, 210, 250), -1)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


@contextlib.contextmanager
def running_server(app: object, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread on 127.0.0.1 and a free port; yields the
    base URL and stops the server (and waits for its thread) on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # port 0: the system picks a free one, and the socket keeps it
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
