"""The HTML reports opened in headless Chromium: not blank, no console errors, diagnoses visible.

Needs Debian's ``chromium`` (``scripts/test.sh`` installs it when it can) and ``playwright``
(driving the system browser: nothing is downloaded). Without them the tests skip, with the reason.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from report_runs import train_blobs

from nndiag.report import write_comparison, write_report


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.skip("Chromium is not installed (apt-get install chromium; scripts/test.sh does it when run as root)")


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e .[test])")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        except Exception as exc:  # any launch failure means: cannot test here
            pytest.skip(f"Chromium at {exe} could not be started by playwright: {exc}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    healthy = train_blobs(root / "healthy", lr=0.05, steps=60)
    dead = train_blobs(root / "dead", lr=0.05, bias=-4.0, steps=60)
    return {
        "healthy": write_report(healthy, root / "h", formats=("html",))["html"],
        "dead": write_report(dead, root / "d", formats=("html",))["html"],
        "comparison": write_comparison([healthy, dead], root / "c", formats=("html",))["html"],
    }


def open_page(browser, path, shot):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(shot), full_page=True)
    return page, problems


def not_blank(shot) -> None:
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape[0] > 900 and img.std() > 20, "screenshot looks blank"
    assert (img < 200).mean() > 0.03, "screenshot has almost no ink"


@pytest.mark.parametrize("which", ["healthy", "dead", "comparison"])
def test_report_renders_without_errors(browser, pages, tmp_path, which):
    page, problems = open_page(browser, pages[which], tmp_path / f"{which}.png")
    assert problems == []
    not_blank(tmp_path / f"{which}.png")
    images = page.locator("img")
    assert images.count() >= (5 if which != "comparison" else 1)
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert all(w > 100 for w in widths), "an embedded image failed to decode"
    page.close()


def test_diagnoses_are_visible(browser, pages, tmp_path):
    page, _ = open_page(browser, pages["dead"], tmp_path / "dead.png")
    verdict = page.locator("#verdict")
    assert verdict.is_visible() and "Problems found" in verdict.inner_text()
    first = page.locator("#diagnoses .diag").first
    assert first.is_visible()
    text = first.inner_text()
    assert "dead_units" in text and "Try:" in text
    page.close()
    page, _ = open_page(browser, pages["healthy"], tmp_path / "healthy.png")
    assert "Healthy" in page.locator("#verdict").inner_text()
    assert page.locator("#diagnoses .diag.warning, #diagnoses .diag.error").count() == 0
    page.close()
