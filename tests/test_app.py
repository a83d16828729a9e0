"""The web service through FastAPI's TestClient: health, model description, prediction of two eyes
and of one eye (equal to `Predictor`'s), Grad-CAM PNGs, every kind of bad upload with its status and
JSON message (the service answering normally afterwards), the body limit enforced while reading,
the busy answer, an internal failure, the page, and an ONNX model (tiny random ResNet, 64 px, CPU)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from eyefuse import ODIR_LABELS, __version__
from eyefuse.data.decode import MAX_PIXELS
from eyefuse.errors import CheckpointError, ConfigError
from eyefuse.serve.app import MIB, REASON_STATUS, create_app, status_for_reason
from eyefuse.serve.explain import MIN_PANEL
from eyefuse.serve.predict import Predictor
from helpers import eye_image, make_checkpoint

LEFT = eye_image()
RIGHT = eye_image(colour=(30, 90, 190), spot=-12)
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.2, 0.5, 0.5, 0.45]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("served") / "run" / "best", thresholds=THRESHOLDS)


@pytest.fixture(scope="module")
def predictor(ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def client(ckpt: Path):
    with TestClient(create_app(ckpt)) as c:
        yield c


def pair(left: bytes | None = LEFT, right: bytes | None = RIGHT) -> dict[str, tuple[str, bytes]]:
    files = {}
    if left is not None:
        files["left"] = ("12_left.jpg", left)
    if right is not None:
        files["right"] = ("12_right.jpg", right)
    return files


def probabilities(doc: dict) -> np.ndarray:
    return np.array([doc["probabilities"][k] for k in ODIR_LABELS])


def assert_still_serving(client: TestClient, predictor: Predictor) -> None:
    response = client.post("/v1/predict", files=pair())
    assert response.status_code == 200, response.text
    (expected,) = predictor.predict_pairs([("12", LEFT, RIGHT)])
    np.testing.assert_allclose(probabilities(response.json()), probabilities(expected.to_dict()), atol=1e-6)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` pixels but holds almost no data: what a
    decompression bomb looks like to a server before it decodes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --- the happy paths -----------------------------------------------------------------------------


def test_health_and_model_description(client, ckpt) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    response = client.get("/v1/model")
    assert response.status_code == 200
    info = response.json()
    assert info["model_kind"] == "pytorch" and info["explain_available"] is True
    assert info["label_names"] == list(ODIR_LABELS)
    assert info["labels"][1] == {"label": "D", "name": "Diabetes (diabetic retinopathy)", "threshold": 0.4}
    assert info["thresholds"] == dict(zip(ODIR_LABELS, THRESHOLDS, strict=True))
    assert info["thresholds_fitted"] is True and info["calibrated"] is False
    assert info["input_size"] == 64 and info["preprocessing"]["size"] == 64
    assert info["architecture"]["attention"] == "residual_attention" and info["head"] == "sigmoid"
    assert info["eyefuse_version"] == __version__
    # the checkpoint is named, but the server's file system layout is not disclosed
    assert info["checkpoint"] == "run/best"
    assert str(ckpt.parent.parent) not in response.text
    assert response.headers["cache-control"] == "no-store"


def test_predict_two_eyes_equals_the_predictor(client, predictor) -> None:
    response = client.post("/v1/predict", files=pair())
    assert response.status_code == 200, response.text
    got = response.json()
    (expected,) = predictor.predict_pairs([("12", LEFT, RIGHT)])
    assert got["id"] == "12"  # from the {ID}_left / {ID}_right file names
    np.testing.assert_allclose(probabilities(got), probabilities(expected.to_dict()), atol=1e-6)
    assert got["labels"] == expected.labels
    assert got["labels"] == [
        k for k, t in zip(ODIR_LABELS, THRESHOLDS, strict=True) if got["probabilities"][k] > t
    ]
    assert got["warnings"] == [] and got["failed"] is False
    # an explicit ID wins over the file names
    assert client.post("/v1/predict", files=pair(), data={"id": "P-7"}).json()["id"] == "P-7"


def test_predict_one_eye_warns_like_predict(client, predictor) -> None:
    response = client.post("/v1/predict", files=pair(right=None))
    assert response.status_code == 200, response.text
    got = response.json()
    (expected,) = predictor.predict_pairs([("12", LEFT, None)])
    np.testing.assert_allclose(probabilities(got), probabilities(expected.to_dict()), atol=1e-6)
    assert (
        got["warnings"]
        == expected.warnings
        == ["right eye: no image given; predicted from the left eye only"]
    )
    # an empty file input of an HTML form (no name, no bytes) is an eye not sent, not an empty file
    files = {"left": ("", b""), "right": ("12_right.jpg", RIGHT)}
    assert (
        client.post("/v1/predict", files=files).json()["warnings"][0].startswith("left eye: no image given")
    )


def test_explain_returns_side_by_side_pngs(client, predictor) -> None:
    response = client.post("/v1/explain", files=pair(), data={"labels": "G, D,G"})
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["explained"] == ["G", "D"]  # order given, repeats dropped
    assert [o["label"] for o in got["overlays"]] == ["G", "D"]
    (expected,) = predictor.predict_pairs([("12", LEFT, RIGHT)])
    np.testing.assert_allclose(probabilities(got), probabilities(expected.to_dict()), atol=1e-5)
    assert got["eyes_present"] == {"left": True, "right": True}
    for overlay in got["overlays"]:
        png = base64.b64decode(overlay["png_base64"])
        assert png.startswith(b"\x89PNG")
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[:2] == (overlay["height"], overlay["width"])
        assert img.shape[1] == 2 * MIN_PANEL + 8  # left and right panels side by side
        assert overlay["probability"] == pytest.approx(got["probabilities"][overlay["label"]])
        # the right half holds an overlay, not an empty "absent" panel
        assert img[60:, MIN_PANEL + 8 :].std() > 10
    # default labels: those decided positive, else the most probable
    default = client.post("/v1/explain", files=pair(right=None)).json()
    assert default["explained"] == (default["labels"] or [max(ODIR_LABELS, key=default["probabilities"].get)])
    assert default["eyes_present"] == {"left": True, "right": False}
    assert default["warnings"] == ["right eye: no image given; predicted from the left eye only"]


# --- bad requests ---------------------------------------------------------------------------------


BAD_UPLOADS = {
    "empty file": ({"left": ("a.jpg", b""), "right": ("b.jpg", RIGHT)}, 422, "empty file"),
    "text named .jpg": ({"left": ("photo.jpg", b"this is not a JPEG\n" * 20)}, 415, "not an image"),
    "truncated JPEG": ({"right": ("cut.jpg", RIGHT[: len(RIGHT) // 2])}, 415, "truncated"),
    "decompression bomb": ({"left": ("huge.png", png_header_only(12_000, 9_000))}, 413, "too large"),
    "no field of view": (
        {"left": ("grey.png", cv2.imencode(".png", np.full((80, 80, 3), 90, np.uint8))[1].tobytes())},
        422,
        "no field of view",
    ),
    "30 MB file": ({"left": ("big.jpg", b"\xff" * (30 * MIB))}, 413, "larger than the limit of 20 MB"),
    "no photograph": ({"id": (None, "12")}, 422, "no photograph given"),
    "unknown field": (
        {"left": ("a.jpg", LEFT), "lefteye": ("b.jpg", RIGHT)},
        422,
        "unknown form field 'lefteye'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_gets_its_status_and_a_json_message(client, predictor, case) -> None:
    files, status, message = BAD_UPLOADS[case]
    response = client.post("/v1/predict", files=files)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"} and message in response.json()["error"]
    assert_still_serving(client, predictor)


def test_bad_request_bodies_and_fields(client, predictor) -> None:
    cases = [
        (client.post("/v1/predict", json={"left": "x"}), 415, "expected a multipart/form-data body"),
        (
            client.post(
                "/v1/predict", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"}
            ),
            400,
            "no boundary",
        ),
        (
            client.post("/v1/predict", files={"left": ("a.jpg", LEFT), "id": (None, "x" * 2000)}),
            422,
            "longer than",
        ),
        (client.post("/v1/explain", files=pair(), data={"labels": "D,Z"}), 422, "unknown label(s) Z"),
        (client.post("/v1/explain", files=pair(), data={"labels": ", ,"}), 422, "names no label"),
        (client.post("/v1/predict", files=pair(), data={"labels": "D"}), 422, "unknown form field 'labels'"),
        (client.get("/v1/nothing"), 404, "no such endpoint: GET /v1/nothing"),
        (client.get("/v1/predict"), 405, "method GET not allowed"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
    # a field given twice is refused rather than one of the two silently chosen
    body = (
        b'--B\r\nContent-Disposition: form-data; name="left"; filename="a.jpg"\r\n\r\n' + LEFT + b"\r\n"
        b'--B\r\nContent-Disposition: form-data; name="left"; filename="b.jpg"\r\n\r\n'
        + LEFT
        + b"\r\n--B--\r\n"
    )
    response = client.post(
        "/v1/predict", content=body, headers={"content-type": "multipart/form-data; boundary=B"}
    )
    assert response.status_code == 422 and "given twice" in response.json()["error"]
    assert_still_serving(client, predictor)


def test_every_preprocess_reason_maps_to_a_client_error() -> None:
    assert status_for_reason("image too large (12000 x 9000 = 108.0 megapixels; the limit is 100)") == 413
    assert status_for_reason("truncated or corrupt image (broken data stream)") == 415
    assert status_for_reason("unsupported pixel format: 32-bit floating point") == 415
    assert status_for_reason("something new") == 422
    assert {status for _, status in REASON_STATUS} == {413, 415, 422}
    assert MAX_PIXELS < 12_000 * 9_000  # the bomb case above really is over the limit


def test_body_limit_is_enforced_while_reading(ckpt) -> None:
    """A chunked body without Content-Length is cut off once it passes the limit: the service
    stops pulling chunks instead of buffering all of it."""
    app = create_app(ckpt, max_upload_mb=1)
    chunk = b"\0" * (256 * 1024)
    pulled = 0
    messages: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        if pulled == 1:  # a well-formed start, so that only the size can stop the service
            head = b'--B\r\nContent-Disposition: form-data; name="left"; filename="a.jpg"\r\n\r\n'
            return {"type": "http.request", "body": head, "more_body": True}
        if pulled > 400:  # 100 MB: the test's own bound
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=B"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert messages[0]["status"] == 413
    assert "larger than the limit of 1 MB" in json.loads(messages[1]["body"])["error"]
    assert pulled <= 6  # the head, 1 MB = 4 chunks, then the one that crosses the limit


def test_busy_service_answers_503_after_the_queue_timeout(ckpt) -> None:
    app = create_app(ckpt, max_concurrency=1, queue_timeout_s=0.2)
    service = app.state.service
    started, release = threading.Event(), threading.Event()
    original = service.predict

    def slow_predict(*args: object) -> dict:
        started.set()
        release.wait(30)
        return original(*args)

    service.predict = slow_predict
    with TestClient(app) as c:
        first: dict[str, object] = {}
        worker = threading.Thread(target=lambda: first.update(r=c.post("/v1/predict", files=pair())))
        worker.start()
        try:
            assert started.wait(30)
            response = c.post("/v1/predict", files=pair())
            assert response.status_code == 503
            assert "busy" in response.json()["error"] and response.headers["retry-after"] == "5"
            assert c.get("/health").status_code == 200  # the event loop is never blocked by model work
        finally:
            release.set()
            worker.join(30)
        assert first["r"].status_code == 200
        service.predict = original
        assert c.post("/v1/predict", files=pair()).status_code == 200


def test_an_internal_failure_is_a_500_and_the_service_goes_on(client, predictor, monkeypatch) -> None:
    served = client.app.state.service.predictor

    def broken(*_: object) -> None:
        raise RuntimeError("simulated fault")

    monkeypatch.setattr(served, "predict_prepared", broken)
    response = client.post("/v1/predict", files=pair())
    assert response.status_code == 500
    assert "internal error" in response.json()["error"] and "RuntimeError" in response.json()["error"]
    monkeypatch.undo()
    assert_still_serving(client, predictor)


def test_bad_options_and_checkpoints_fail_at_creation(tmp_path, ckpt) -> None:
    with pytest.raises(ConfigError, match="--max-upload-mb"):
        create_app(ckpt, max_upload_mb=0)
    with pytest.raises(ConfigError, match="--workers-concurrency"):
        create_app(ckpt, max_concurrency=0)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_app(tmp_path / "nothing")


# --- the page -------------------------------------------------------------------------------------


def test_page_and_its_files_load_nothing_from_elsewhere(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for needed in (
        'for="left-file"',
        'id="left-file"',
        'for="right-file"',
        'id="right-file"',
        'id="analyse"',
    ):
        assert needed in page.text
    texts = [page.text]
    for name in ("app.js", "style.css"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200
        texts.append(response.text)
    for text in texts:
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert "@import" not in text
    assert "/v1/predict" in texts[1] and "/v1/explain" in texts[1]


# --- an ONNX model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eyefuse.serve.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(ckpt, out)
    return out


@pytest.mark.slow
def test_onnx_model_predicts_like_pytorch_and_refuses_explain(onnx_model, client) -> None:
    with TestClient(create_app(onnx_model)) as onnx_client:
        info = onnx_client.get("/v1/model").json()
        assert info["model_kind"] == "onnx" and info["explain_available"] is False
        assert info["checkpoint"] == "tiny.onnx" and info["thresholds"]["D"] == 0.4
        got = onnx_client.post("/v1/predict", files=pair())
        assert got.status_code == 200, got.text
        expected = client.post("/v1/predict", files=pair()).json()
        np.testing.assert_allclose(probabilities(got.json()), probabilities(expected), atol=1e-4)
        refused = onnx_client.post("/v1/explain", files=pair())
        assert refused.status_code == 501 and "PyTorch checkpoint" in refused.json()["error"]
        bad = onnx_client.post("/v1/predict", files={"left": ("x.jpg", b"not an image at all")})
        assert bad.status_code == 415


def test_host_header_is_checked_against_the_address_served(ckpt: Path) -> None:
    """DNS rebinding: a page of another site whose name now resolves to 127.0.0.1 sends its own
    name in the Host header; the service bound to loopback answers only its local names."""
    from eyefuse.serve.app import allowed_hosts_for

    allowed = allowed_hosts_for("127.0.0.1")
    assert {"127.0.0.1", "localhost", "::1"} <= set(allowed)
    assert allowed_hosts_for("0.0.0.0") == ["*"] and allowed_hosts_for("10.0.0.5") == ["10.0.0.5"]
    assert allowed_hosts_for("127.0.0.1", ["eyes.example.org"]) == ["eyes.example.org"]
    with TestClient(create_app(ckpt, allowed_hosts=allowed), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"host": "localhost:8000"}).status_code == 200
        assert c.get("/health", headers={"host": "[::1]:8000"}).status_code == 200
        refused = c.get("/health", headers={"host": "attacker.example:8000"})
        assert refused.status_code == 400 and "--allowed-hosts" in refused.json()["detail"]
        assert c.post("/v1/predict", files=pair(), headers={"host": "attacker.example"}).status_code == 400
    with TestClient(create_app(ckpt, allowed_hosts=["*"])) as c:
        assert c.get("/health", headers={"host": "anything.example"}).status_code == 200
