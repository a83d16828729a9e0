"""Load: the real service (uvicorn on 127.0.0.1, a free port) answers 200 prediction requests sent
8 at a time with zero errors, and every answer equals the one its photographs get alone (so
concurrent requests never mix). Latency percentiles are printed (`pytest -s`) and written to
`latency.txt` in the test's folder; no timing is asserted."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from eyefuse import ODIR_LABELS
from eyefuse.serve.app import create_app
from eyefuse.utils.io import atomic_write_text
from helpers import eye_image, make_checkpoint, running_server

REQUESTS = 200
CONCURRENCY = 8
# Three different patients (one with a single eye), sent in turn.
PATIENTS = [
    {"left": ("1_left.jpg", eye_image()), "right": ("1_right.jpg", eye_image(spot=-12))},
    {"left": ("2_left.jpg", eye_image(colour=(30, 90, 190), spot=4)), "right": ("2_right.jpg", eye_image())},
    {"right": ("3_right.jpg", eye_image(colour=(60, 120, 200), spot=-6))},
]


async def _hammer(base: str) -> tuple[list[float], list[str], list[dict]]:
    """Send REQUESTS predictions, at most CONCURRENCY in flight; latencies in seconds, errors, answers."""
    latencies: list[float] = []
    errors: list[str] = []
    answers: list[dict] = [{} for _ in range(REQUESTS)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REQUESTS):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits, trust_env=False) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/predict", files=PATIENTS[i % len(PATIENTS)])
                except httpx.HTTPError as e:
                    errors.append(f"request {i}: {type(e).__name__}: {e}")
                    continue
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors.append(f"request {i}: HTTP {response.status_code}: {response.text[:200]}")
                else:
                    answers[i] = response.json()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies, errors, answers


@pytest.mark.slow
def test_200_concurrent_predictions_without_errors(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "run" / "best")
    app = create_app(ckpt, max_concurrency=2)
    with running_server(app) as base:
        with httpx.Client(base_url=base, timeout=60.0, trust_env=False) as client:
            alone = []
            for files in PATIENTS:
                response = client.post("/v1/predict", files=files)
                assert response.status_code == 200, response.text
                alone.append(response.json())
        wall = time.perf_counter()
        latencies, errors, answers = asyncio.run(_hammer(base))
        wall = time.perf_counter() - wall
        with httpx.Client(base_url=base, timeout=10.0, trust_env=False) as client:
            assert client.get("/health").json() == {"status": "ok"}

    assert errors == []
    assert len(latencies) == REQUESTS
    for i, answer in enumerate(answers):
        expected = alone[i % len(PATIENTS)]
        assert answer["id"] == expected["id"] and answer["warnings"] == expected["warnings"]
        got = [answer["probabilities"][k] for k in ODIR_LABELS]
        np.testing.assert_allclose(got, [expected["probabilities"][k] for k in ODIR_LABELS], atol=1e-6)

    ms = sorted(1e3 * t for t in latencies)
    p50 = statistics.median(ms)
    p95 = ms[min(len(ms) - 1, int(np.ceil(0.95 * len(ms))) - 1)]
    report = (
        f"{REQUESTS} POST /v1/predict, {CONCURRENCY} in flight, service max_concurrency 2, tiny model "
        f"(resnet10t, 64 px), 96x112 px JPEGs\n"
        f"latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms; "
        f"throughput {REQUESTS / wall:.1f} requests/s; errors 0\n"
    )
    atomic_write_text(tmp_path / "latency.txt", report)
    print("\n" + report, end="")
