"""``mugv-infer ui`` (issue 30): the gradio page driven in headless Chromium through
playwright with a tiny random model: a prompt in, a video out with its settings; a bad value
shown in the page as one line."""

from __future__ import annotations

import shutil
import socket

import pytest

pytest.importorskip("gradio")
pytest.importorskip("playwright")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_job_names_the_bad_field():
    from mugv_infer.ui import Job, check_job

    good = Job(" a cat ", None, 32, 48, 9, 2, 4.0, 1)
    assert check_job(good).prompt == "a cat"
    for bad, match in [
        ({"prompt": "  "}, "prompt is empty"),
        ({"height": 40}, "multiples of 16"),
        ({"num_frames": 10}, "1 \\+ 8k"),
        ({"steps": 0}, "steps must be"),
        ({"guidance_scale": 0.5}, "guidance must be"),
        ({"seed": 1.5}, "seed must be a whole number"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_job(Job(**{**good.__dict__, **bad}))


@pytest.mark.slow
def test_ui_generates_a_video_in_headless_chromium(parts, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from mugv_infer import MUGVPipeline
    from mugv_infer.ui import UIDefaults, build_app, load_pipeline
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    # what `mugv-infer ui --model FOLDER` serves: a saved folder, loaded on the CPU
    MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"]).save_pretrained(
        tmp_path / "model"
    )
    pipe = load_pipeline(tmp_path / "model", "cpu")
    pipe.set_progress_bar_config(disable=True)
    defaults = UIDefaults(height=32, width=48, num_frames=9, steps=2, seed=7)
    app = build_app(pipe, outputs=tmp_path / "videos", defaults=defaults)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox"])  # fmt: skip
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("#prompt textarea").fill("a cat walks on the grass")
            page.locator("#generate").click()
            video = page.locator("#video video")
            video.wait_for(state="attached", timeout=180_000)
            assert video.get_attribute("src")
            settings = page.locator("#settings")
            settings.get_by_text("a cat walks on the grass").wait_for(timeout=30_000)
            assert "48" in settings.inner_text()
            # a bad value: one line in the page, no traceback
            page.locator("#frames input").fill("10")
            page.locator("#generate").click()
            error = page.get_by_text("cannot be produced by the VAE").first
            error.wait_for(timeout=60_000)
            assert "Traceback" not in page.content()
            browser.close()
    finally:
        app.close()
    written = list((tmp_path / "videos").glob("*.mp4"))
    assert len(written) == 1 and written[0].stat().st_size > 0
