"""End to end in headless Chromium (Debian's chromium, driven by Playwright; no browser download): open the
studio, pick the tiny model, type a report, draw a mask with NiiVue's pen, generate, and check the rendered
canvas and the downloaded volume.

CI installs chromium (.ci/run). Skipped, with the reason, only where no chromium and no Playwright are installed.
"""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.studio.conftest import MODELS
from volsynth.io import read_label, read_volume

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWER = Path(__file__).resolve().parents[2] / "src" / "volsynth" / "studio" / "static" / "vendor" / "niivue.js"
# WebGL2 without a GPU: ANGLE on SwiftShader
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", "--no-sandbox"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(workdir):
    """The studio served by uvicorn on a free local port, in a thread."""
    import uvicorn

    from volsynth.studio.server import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(workdir, [MODELS]), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    assert instance.started, "the studio server did not start"
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def browser():
    """Headless system chromium through Playwright."""
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; CI installs it in .ci/run)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip: .[dev])")
    if not VIEWER.is_file():
        if shutil.which("npm") is None:  # the studio says how to get the viewer; the rest of volsynth works
            pytest.skip("npm is not installed, so make setup could not fetch the studio's viewer (NiiVue)")
        pytest.fail(f"{VIEWER.name} is missing: run make setup (it copies NiiVue from npm)")
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def _stroke_square(page, cx: float, cy: float, half: float) -> None:
    page.mouse.move(cx - half, cy - half)
    page.mouse.down()
    for x, y in ((cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half), (cx - half, cy - half)):
        page.mouse.move(x, y, steps=6)
    page.mouse.up()


@pytest.mark.slow
def test_draw_generate_and_download_in_chromium(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server}/")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
    page.select_option("#model", "tiny-abdomen")
    page.wait_for_function("document.body.dataset.state === 'ready' && window.studio.state.card.id === 'tiny-abdomen'")
    page.fill("#prompt", "One 30 mm hypodense lesion in segment VII.")
    page.check("#mode-draw")
    box = page.locator("#draw").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.click("#pens button[data-pen='1']")  # liver
    _stroke_square(page, cx, cy, box["width"] * 0.3)
    page.click("#pens button[data-pen='4']")  # tumour inside it
    _stroke_square(page, cx + 10, cy + 10, box["width"] * 0.08)
    page.fill("#steps", "4")
    page.click("#generate")
    page.wait_for_function("['result', 'failed', 'cancelled'].includes(document.body.dataset.state)",
                           timeout=120_000)
    assert page.evaluate("document.body.dataset.state") == "result", page.inner_text("#error")
    assert page.evaluate("document.getElementById('progress').value") == 4
    page.wait_for_timeout(500)  # let NiiVue draw the loaded volumes

    # the result canvas shows a rendered volume: many distinct grey levels, not a blank or flat canvas
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(page.locator("#result").screenshot())).convert("L"))
    assert shot.std() > 10 and len(np.unique(shot)) > 50, (shot.std(), len(np.unique(shot)))
    page.click("[data-view=render]")
    page.wait_for_timeout(500)
    render = np.asarray(Image.open(io.BytesIO(page.locator("#result").screenshot())).convert("L"))
    assert (render > 20).mean() > 0.05 and not np.array_equal(render, shot)

    # the downloaded volume is a NIfTI on the drawn mask's grid (the model's 32³ grid), with the drawing's labels
    with page.expect_download() as download:
        page.click("#downloads a[data-file='image.nii.gz']")
    image_path = tmp_path / "image.nii.gz"
    download.value.save_as(image_path)
    image = read_volume(image_path)
    job_id = page.evaluate("window.studio.state.result.id")
    mask = read_label(_result_mask(tmp_path, page, server, job_id))
    assert image.shape == mask.shape == (32, 32, 32)
    np.testing.assert_allclose(image.affine, mask.affine, atol=1e-4)
    assert set(mask.present()) == {1, 4}
    assert not errors, errors


def _result_mask(tmp_path: Path, page, server: str, job_id: str) -> Path:
    """The input mask the studio recorded for a result, fetched through the page's own origin."""
    response = page.request.get(f"{server}/api/results/{job_id}/mask.nii.gz")
    assert response.ok
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(response.body())
    return path
