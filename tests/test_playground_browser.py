"""The playground page in a real browser: Chromium from the system packages, driven by Selenium.

Skips when Selenium, Chromium or chromedriver is missing (`apt-get install chromium chromium-driver`).
Set TEXTRNN_SCREENSHOT=path.png to keep a screenshot of the page after a generation.
"""

import os
import shutil
import threading
import time

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from textrnn.cli import cli  # noqa: E402
from textrnn.serve.app import bind, load_server, make_server  # noqa: E402
from textrnn.serve.request import Limits  # noqa: E402

from conftest import TINY_CLI, TINY_TEXT  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="no Chromium and chromedriver (apt-get install chromium chromium-driver)"
)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    corpus = root / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    out = root / "tiny-run"
    args = ["train", "--corpus", corpus, *TINY_CLI, "--max-steps", "6", "--eval-every", "3", "--max-seconds", "0"]
    result = CliRunner().invoke(cli, [str(a) for a in [*args, "--out", out]])
    assert result.exit_code == 0, result.output
    torch.set_num_threads(1)
    app, _, _ = load_server(out, limits=Limits(max_tokens=100_000))
    sock = bind("127.0.0.1", 0)
    server = make_server(app, drain_seconds=2)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=960,760",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def _fill(driver, element_id: str, value: str) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def test_the_page_shows_the_model_and_streams_text(page_url, browser):
    browser.get(page_url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda driver: "val perplexity" in _text(driver, "figures"))
    assert "tiny-run" in _text(browser, "model") and "lstm" in _text(browser, "model")
    _fill(browser, "prompt", "the time")
    _fill(browser, "length", "300")
    _fill(browser, "seed", "4")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda driver: "finish: length" in _text(driver, "status"))
    output = _text(browser, "output")
    assert output.startswith("the time") and len(output) == len("the time") + 300
    assert "300 characters" in _text(browser, "status")
    if os.environ.get("TEXTRNN_SCREENSHOT"):
        browser.save_screenshot(os.environ["TEXTRNN_SCREENSHOT"])
    # The same seed gives the same text in the page.
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda driver: "finish: length" in _text(driver, "status"))
    assert _text(browser, "output") == output


def test_stop_keeps_what_came_and_errors_are_shown(page_url, browser):
    browser.get(page_url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda driver: "val perplexity" in _text(driver, "figures"))
    _fill(browser, "length", "100000")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda driver: len(_text(driver, "output")) > 50)
    browser.find_element(By.ID, "stop-button").click()
    wait.until(lambda driver: "stopped after" in _text(driver, "status"))
    assert browser.find_element(By.ID, "generate").is_enabled()
    # A prompt with characters the model never saw: the server's message appears in the page.
    _fill(browser, "prompt", "jazz quiz")
    _fill(browser, "length", "10")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda driver: "error:" in _text(driver, "output"))
    assert "vocabulary lacks" in _text(browser, "output")
