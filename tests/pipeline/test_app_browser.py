"""``stbava app`` in a real browser: the command is started as a user starts it, headless Chromium (driven by
Selenium through Debian's chromedriver) uploads a generated video, presses Segment, and finds the overlay
video (playable: the browser reads its duration) and one mask per second on the page.

Nothing touches the network: the driver path is given (no Selenium Manager), ``SE_AVOID_STATS`` is set, the
app listens on 127.0.0.1 with Gradio's analytics off. ``STBAVA_APP_SCREENSHOT=path`` also saves a
screenshot of the page after the segmentation (how docs/app_screenshot.png is made).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from predict_helpers import free_port

from stbava.testing import write_test_video

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 3
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver)")


def start_app(checkpoint: Path, port: int, work: Path) -> subprocess.Popen:
    """``stbava app`` in its own process, as a user starts it (not waited for: see :func:`wait_for`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, "-m", "stbava", "app", "--checkpoint", str(checkpoint), "--port",
                             str(port), "--device", "cpu", "--work-dir", str(work), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, port: int) -> None:
    """Returns once the app's page answers; fails with the app's output if it exits first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"stbava app exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("stbava app did not answer within 60 s")


def chromium() -> object:
    """Headless Chromium through the system chromedriver (given explicitly, so Selenium Manager never runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def segment_in_browser(driver: object, url: str, video: Path, seconds: int) -> dict:
    """Upload ``video``, press Segment, wait for the overlay and the masks; what the page then shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    driver.get(url)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))).send_keys(str(video))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "video"))  # the uploaded input is shown
    driver.find_element(By.XPATH, "//button[normalize-space()='Segment']").click()

    def overlay_ready(d: object) -> object:
        vids = [v for v in d.find_elements(By.CSS_SELECTOR, "video") if "overlay" in (v.get_attribute("src") or "")]
        ok = vids and d.execute_script("return arguments[0].readyState >= 1 && arguments[0].duration", vids[0])
        return vids[0] if ok else False

    overlay = wait.until(overlay_ready)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".gallery-item img, button.thumbnail-item img"))
               >= seconds)
    return {"overlay_src": overlay.get_attribute("src"),
            "duration": driver.execute_script("return arguments[0].duration", overlay),
            "masks": [i.get_attribute("src") for i in
                      driver.find_elements(By.CSS_SELECTOR, ".gallery-item img, button.thumbnail-item img")],
            "text": driver.find_element(By.TAG_NAME, "body").text}


def test_upload_segment_and_see_the_overlay_and_masks(ckpt, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    pytest.importorskip("selenium")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    video = write_test_video(tmp_path / "clip.mp4", SECONDS, fps=8, size=(96, 72))
    port = free_port()
    app = start_app(ckpt, port, tmp_path / "work")
    driver = None
    try:
        driver = chromium()  # starts while the app imports Gradio and restores the model
        wait_for(app, port)
        page = segment_in_browser(driver, f"http://127.0.0.1:{port}/", video, SECONDS)
        if os.environ.get("STBAVA_APP_SCREENSHOT"):
            driver.save_screenshot(os.environ["STBAVA_APP_SCREENSHOT"])
        written = sorted(p.name for p in (tmp_path / "work").rglob("masks/clip_*.png"))
    finally:
        if driver is not None:
            driver.quit()
        app.kill()  # its work dir's removal on close is test_app.py's (a graceful stop costs ~4 s here)
        app.wait(timeout=20)
    assert page["overlay_src"].split("?")[0].endswith("overlay.mp4")
    assert page["duration"] == pytest.approx(SECONDS, abs=0.2)  # the browser decoded the overlay's length
    assert written == ["clip_1.png", "clip_2.png", "clip_3.png"]  # what the request wrote ...
    shown = [src.split("?")[0].rsplit("/", 1)[-1] for src in page["masks"]]
    assert shown == written  # ... is what the page shows, in order
    for k in range(SECONDS):
        assert f"{k}-{k + 1} s:" in page["text"]  # each mask's caption
