"""The playground page in a real browser: Debian's headless ``chromium`` driven by Playwright.

Playwright drives the system browser through ``executable_path`` (no browser download). The test
sets the controls, generates (streamed), checks the text that appears equals greedy ``generate``,
opens the next-token panel, and saves a screenshot to test-artifacts/playground.png. It skips,
saying what is missing, where chromium or the playwright package is absent (``.ci/run`` installs
both).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serve_utils import LiveServer

from llmkit import checkpoint
from llmkit.inference import generate
from llmkit.serve.app import ServeSettings, create_app

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
KEY = "browser-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def served(request):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: apt-get install -y chromium (as .ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    tiny_checkpoint = request.getfixturevalue("tiny_checkpoint")  # conftest's, built only when the browser runs
    model = checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=128))
    live = LiveServer(create_app(model, ServeSettings(name="tiny", api_key=KEY, max_batch=4)))
    yield model, live
    live.close()


def test_playground_generates_and_explains(served):
    from playwright.sync_api import expect, sync_playwright

    model, live = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # root in CI containers
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(live.url + "/")
            expect(page.locator("#model")).to_have_text("tiny")
            page.fill("#prompt", "The cat")
            page.fill("#max_tokens", "24")
            page.uncheck("#sampling")  # greedy, so the text is known
            page.fill("#top_k", "5")
            page.fill("#seed", "3")
            page.fill("#stop", "")
            page.fill("#api_key", KEY)
            page.click("#generate")
            expect(page.locator("#status")).to_contain_text("done", timeout=20_000)
            want = generate(model, "The cat", max_new_tokens=24)[0].text
            assert page.locator("#completion").text_content() == want
            assert page.locator("#error").text_content() == ""
            # the next-token panel at the third new token: the drawn token is marked
            page.fill("#position", "2")
            page.click("#explain")
            expect(page.locator("#dist tbody tr")).to_have_count(10, timeout=20_000)
            expect(page.locator("#dist tbody tr.drawn")).to_have_count(1)
            assert page.locator("#drawn").text_content().startswith("position 2")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
            # a wrong key shows the server's error message on the page
            page.fill("#api_key", "wrong")
            page.click("#generate")
            expect(page.locator("#error")).to_contain_text("API key", timeout=20_000)
        finally:
            browser.close()
