"""The page in a real headless Chromium (Playwright, Debian's /usr/bin/chromium): pick two
photographs, analyse, read the D bar and compare it with the API's answer for the same files, wait
for a Grad-CAM heatmap, and keep a screenshot (`page.png` in the test's folder; also in
`test-output/` at the repository root when EYEFUSE_TEST_OUTPUT is set). The page must load nothing
from another origin and log no errors."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from eyefuse import ODIR_LABELS
from eyefuse.serve.app import create_app
from eyefuse.utils.io import atomic_write_bytes
from helpers import eye_image, make_checkpoint, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"{CHROMIUM} is missing: install Debian's chromium package (`make test` does) "
        "to run the page test",
    ),
]


def test_page_shows_the_api_probabilities_and_a_heatmap(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    left, right = tmp_path / "5_left.jpg", tmp_path / "5_right.jpg"
    left.write_bytes(eye_image(scale=2))
    right.write_bytes(eye_image(colour=(30, 90, 190), spot=-12, scale=2))
    ckpt = make_checkpoint(tmp_path / "run" / "best")

    with running_server(create_app(ckpt)) as base:
        with httpx.Client(base_url=base, timeout=60.0, trust_env=False) as client:
            files = {"left": (left.name, left.read_bytes()), "right": (right.name, right.read_bytes())}
            api = client.post("/v1/predict", files=files)
        assert api.status_code == 200, api.text
        expected = api.json()

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.set_default_timeout(30_000)
                requested: list[str] = []
                problems: list[str] = []
                failed: list[str] = []
                page.on("request", lambda r: requested.append(r.url))
                page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))

                page.goto(base + "/")
                sync_api.expect(page.locator("#model-info")).to_contain_text("Model: run/best")
                sync_api.expect(page.locator("#analyse")).to_be_disabled()
                page.get_by_label("Left eye photograph").set_input_files(str(left))
                page.get_by_label("Right eye photograph").set_input_files(str(right))
                sync_api.expect(page.locator("#left-preview")).to_be_visible()
                sync_api.expect(page.locator("#right-preview")).to_be_visible()
                page.get_by_role("button", name="Analyse").click()

                bar = page.locator("#prob-D")
                sync_api.expect(bar).to_have_text(f"{100 * expected['probabilities']['D']:.1f} %")
                shown = float(bar.inner_text().replace("%", "").strip())
                assert shown == pytest.approx(100 * expected["probabilities"]["D"], abs=0.05)
                # every bar shows its label's value, and exactly the decided labels are highlighted
                for k in ODIR_LABELS:
                    text = page.locator(f"#prob-{k}").inner_text()
                    assert text == f"{100 * expected['probabilities'][k]:.1f} %"
                rows = page.locator("#bars li.positive")
                highlighted = rows.evaluate_all("rows => rows.map(r => r.dataset.label)")
                assert highlighted == expected["labels"]

                heatmap = page.locator("#heatmaps img[data-label]").first
                sync_api.expect(heatmap).to_be_visible()
                page.wait_for_function(
                    "() => { const i = document.querySelector('#heatmaps img');"
                    " return i !== null && i.naturalWidth > 0; }"
                )
                explained = heatmap.get_attribute("data-label")
                assert explained in ODIR_LABELS
                top = max(ODIR_LABELS, key=expected["probabilities"].get)
                assert explained in (expected["labels"] or [top])

                png = page.screenshot(full_page=True)
            finally:
                browser.close()

    assert failed == [] and problems == []
    # only this origin (and inline data for the heatmaps, blob: for the previews)
    assert requested and all(u.startswith((base, "data:", "blob:")) for u in requested), requested
    atomic_write_bytes(tmp_path / "page.png", png)
    if os.environ.get("EYEFUSE_TEST_OUTPUT"):
        atomic_write_bytes(REPO_ROOT / "test-output" / "page.png", png)
