"""The dashboard in a real browser: headless chromium (the system's, driven by Playwright) against a running
`mambaft serve` with an API key. A user signs in, uploads the demo data and starts a tiny job through the
form, and watches it succeed with its loss curve, events, checkpoints and the adapter download.

Screenshots land in MAMBAFT_SCREENSHOT_DIR when set (docs/img for the README), else in the test's temp folder.
Slower than most (about a minute beyond the server's start): the job runs for real, with its stability
report, because what the page must show is a job that succeeded; the browser itself adds seconds.
"""

import importlib.util
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .factories import demo_slice
from .service import Service, serve_with_key

CHROMIUM = shutil.which("chromium")
PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
MISSING = "needs the system's chromium (apt-get install chromium) and playwright (the test extra)"
if CHROMIUM is None or not PLAYWRIGHT:
    # CI installs both (.ci/run, the test extra); there a missing browser is a failure, not a skip.
    if os.environ.get("CI"):
        pytest.fail(MISSING, pytrace=False)
    pytest.skip(MISSING, allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402 (only once it is known to be installed)

JOB_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("dashboard")
    service = serve_with_key(folder, models_dir, "dashboard", MAMBAFT_CHECKPOINT_EVERY_STEPS="2")
    yield service
    service.stop()


def test_a_job_started_from_the_dashboard_succeeds_with_its_curve_events_and_adapter(
    server: Service, tmp_path: Path
) -> None:
    screenshots = Path(os.environ.get("MAMBAFT_SCREENSHOT_DIR") or tmp_path)
    train = tmp_path / "train.jsonl"
    train.write_bytes(demo_slice("train.jsonl", 16))
    key = server.headers["Authorization"].removeprefix("Bearer ")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 600})
        # Script errors, and what the Content-Security-Policy blocked (refused 4xx answers, such as the
        # first request before signing in, are the page working as meant).
        refused = []
        page.on("pageerror", lambda error: refused.append(str(error)))
        page.on("console", lambda message: "Content Security Policy" in message.text and refused.append(message.text))
        page.goto(f"{server.url}/ui")

        # Authentication is on: the page asks for a key, and with it shows the jobs.
        page.wait_for_selector("#sign-in:not([hidden])")
        page.fill("#api-key", key)
        page.screenshot(path=screenshots / "dashboard-sign-in.png")
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#dashboard:not([hidden])")
        page.wait_for_selector("#model option[value='mamba-tiny']", state="attached")

        page.set_input_files("#training-file", train)
        page.select_option("#model", "mamba-tiny")
        page.fill("#suffix", "ui")
        page.fill("#batch-size", "2")
        page.fill("#max-seq-len", "64")
        page.fill("#lora-r", "4")
        page.click("#create-button")

        page.wait_for_selector("#job-status[data-status='succeeded']", timeout=JOB_TIMEOUT_MS)
        job_id = page.text_content("#job-id")
        page.wait_for_selector(f"tr[data-job-id='{job_id}'][data-status='succeeded']", timeout=10_000)

        # The curve has a point per progress event the stream delivered, and there were several.
        progress_events = page.locator("#events li[data-type='progress']").count()
        points = int(page.get_attribute("#loss-curve", "data-points"))
        polyline = page.get_attribute("#loss-curve polyline", "points").split()
        assert points == progress_events == len(polyline) >= 2
        events = page.locator("#events li").all_text_contents()
        assert any("successfully completed" in event for event in events), events
        checkpoint_events = page.locator("#events li[data-type='checkpoint']").count()
        assert page.locator("#checkpoints tr").count() == checkpoint_events >= 1
        page.wait_for_selector("#stability-plot:not([hidden]), #stability-note:not(:empty)")

        with page.expect_download() as download:
            page.click("#download-adapter")
        archive = tmp_path / "adapter.tar.gz"
        download.value.save_as(archive)
        with tarfile.open(archive) as tar:
            assert any(name.endswith("adapter_config.json") for name in tar.getnames())

        page.screenshot(path=screenshots / "dashboard-job.png", full_page=True)
        browser.close()

    assert not refused, refused
