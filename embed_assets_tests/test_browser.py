"""The Dagster UI in a real headless Chromium, as a user drives it.

``dagster dev`` serves this workspace on loopback with its own DAGSTER_HOME and artifact home;
Debian's ``chromium`` (driven by selenium through ``chromedriver``) opens the asset graph and
checks every asset is listed, launches a run with a bad range from the job's launchpad and sees
it fail before any asset materializes, naming the field, then launches a tiny real run, waits
for it to succeed, and opens ``retrieval_eval``: the metric table, the numeric metrics and the
report image must be shown, the image decoded by the browser. Screenshots of each step are
saved under ``embed_assets_tests/artifacts/browser/`` (printed at the end).

Skipped only where no chromium is installed and ``CI`` is unset; in CI it always runs
(``.ci/run`` installs chromium and chromium-driver).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_pipeline_e2e import ASSETS, tiny_run_config

from embed_assets_tests.process_groups import free_port, graphql, start_group, stop_group

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
JOB = "embed_assets_pipeline"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
        reason="no chromium/chromedriver (apt-get install chromium chromium-driver); runs in CI",
    ),
]

RUN_QUERY = """
query ($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      status
      stepStats { stepKey status }
      eventConnection(afterCursor: null) {
        events {
          __typename
          ... on MessageEvent { message }
          ... on EngineEvent { error { message causes { message } } }
          ... on RunFailureEvent { error { message causes { message } } }
        }
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    """``dagster dev`` on a free loopback port, with a fresh DAGSTER_HOME and EMBED_ASSETS_HOME;
    yields the base URL. The whole process group is stopped afterwards."""
    tmp = tmp_path_factory.mktemp("dagster_dev")
    (tmp / "dagster_home").mkdir()
    (tmp / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp / "dagster_home"),
        "EMBED_ASSETS_HOME": str(tmp / "home"),
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_path = tmp / "dagster_dev.log"
    log = log_path.open("w")
    # Its own process group: the webserver, daemon, code server and runs.
    dagster_dev = [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml"]
    proc = start_group([*dagster_dev, "-h", "127.0.0.1", "-p", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"dagster dev exited early:\n{log_path.read_text()[-3000:]}"
            try:
                if graphql(f"{base}/graphql", "{ assetNodes { id } }").get("data", {}).get("assetNodes"):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"UI never served the assets:\n{log_path.read_text()[-3000:]}"
            time.sleep(2)
        yield base
    finally:
        stop_group(proc)
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / "dagster_dev.log")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1400",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or "/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _wait(driver, condition, timeout: float = 60, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition, message)


def _dismiss_dialogs(driver, wait_s: float = 0.0) -> bool:
    """Skip the first-visit community dialog, which covers the page, when it is shown (waiting up
    to ``wait_s`` for it to appear); True when one was dismissed."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + wait_s
    while True:
        skip = [
            b
            for b in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']")
            if b.is_displayed()
        ]
        if skip:
            skip[0].click()
            _wait(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, ".bp5-overlay-backdrop"), 20)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _click(driver, element) -> None:
    """Click, dismissing a dialog that appeared over the element in the meantime."""
    from selenium.common.exceptions import ElementClickInterceptedException

    try:
        element.click()
    except ElementClickInterceptedException:
        _dismiss_dialogs(driver, wait_s=5)
        element.click()


def _launch_from_launchpad(driver, base: str, run_config: dict, name: str) -> str:
    """Open the job's launchpad, put ``run_config`` in its YAML editor, press Launch Run;
    returns the run id of the run page the UI opens."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/locations/embed_assets.defs.definitions/jobs/{JOB}/playground")
    _wait(driver, lambda d: d.execute_script("return !!document.querySelector('.CodeMirror')"), 90)
    _dismiss_dialogs(driver, wait_s=3)
    driver.execute_script(
        "document.querySelector('.CodeMirror').CodeMirror.setValue(arguments[0])", yaml.safe_dump(run_config)
    )
    launch = _wait(
        driver,
        lambda d: next(
            (
                b
                for b in d.find_elements(By.XPATH, "//button[normalize-space()='Launch Run']")
                if b.is_enabled()
            ),
            False,
        ),
        60,
        "Launch Run never became enabled (the launchpad rejected the config?)",
    )
    _shot(driver, f"launchpad_{name}")
    _click(driver, launch)
    _wait(driver, lambda d: "/runs/" in d.current_url, 60, "the UI did not open the launched run")
    return driver.current_url.rstrip("/").split("/runs/")[1].split("?")[0]


def _wait_for_run(base: str, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = graphql(f"{base}/graphql", RUN_QUERY, {"runId": run_id})["data"]["runOrError"]
        if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.get('status')} after {timeout} s"
        time.sleep(3)


def test_asset_graph_lists_every_asset(dagster_dev, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{dagster_dev}/asset-groups")
    _wait(browser, lambda d: d.find_elements(By.XPATH, "//button[div[@aria-label='arrow_drop_down']]"), 90)
    _dismiss_dialogs(browser, wait_s=15)  # shown once per browser profile, a few seconds after the first page
    # The graph shows one box per group; the side tree lists each group's assets when opened.
    carets = browser.find_elements(By.XPATH, "//button[div[@aria-label='arrow_drop_down']]")
    for i in range(len(carets)):  # from the bottom up, so the rows above do not move
        _click(
            browser, browser.find_elements(By.XPATH, "//button[div[@aria-label='arrow_drop_down']]")[-1 - i]
        )
    _wait(browser, lambda d: set(d.find_element(By.TAG_NAME, "body").text.split()) >= ASSETS, 30)
    _shot(browser, "asset_graph")
    shown = set(browser.find_element(By.TAG_NAME, "body").text.split())
    assert shown >= ASSETS, ASSETS - shown


def test_a_range_error_fails_the_run_before_any_asset(dagster_dev, browser):
    """``dedup_cosine: 1.5`` passes Dagster's type check in the launchpad (it is a float), so the
    run starts; the run-config check at the run's start must fail it, naming the field, before
    any asset materializes."""
    from selenium.webdriver.common.by import By

    config = tiny_run_config()
    config["ops"]["qa_quality_scores"] = {"config": {"dedup_cosine": 1.5}}
    run_id = _launch_from_launchpad(browser, dagster_dev, config, "dedup_cosine_1.5")
    run = _wait_for_run(dagster_dev, run_id, timeout=240)
    assert run["status"] == "FAILURE"
    assert all(step["status"] != "SUCCESS" for step in run["stepStats"]), run["stepStats"]
    events = run["eventConnection"]["events"]
    assert not [e for e in events if e["__typename"] == "MaterializationEvent"]
    errors = [e["error"] for e in events if e.get("error")]
    text = " ".join(
        [err["message"] for err in errors] + [c["message"] for err in errors for c in err.get("causes") or []]
    )
    assert "qa_quality_scores.config.dedup_cosine" in text, text[-2000:]
    assert any(e.get("message", "").startswith("Initialization of resources") for e in events)
    browser.get(f"{dagster_dev}/runs/{run_id}")
    _wait(browser, lambda d: "dedup_cosine" in d.find_element(By.TAG_NAME, "body").text, 90)
    _shot(browser, "run_failed_dedup_cosine")


def test_tiny_run_from_the_launchpad_shows_the_evaluation_report(dagster_dev, browser):
    from selenium.webdriver.common.by import By

    run_id = _launch_from_launchpad(browser, dagster_dev, tiny_run_config(), "tiny_run")
    run = _wait_for_run(dagster_dev, run_id, timeout=1200)
    _shot(browser, "run_finished")
    assert run["status"] == "SUCCESS", [e.get("message") for e in run["eventConnection"]["events"]][-20:]
    steps = {s["stepKey"]: s["status"] for s in run["stepStats"]}
    assert steps.get("retrieval_eval") == "SUCCESS", steps
    browser.get(f"{dagster_dev}/runs/{run_id}")
    _wait(browser, lambda d: "Success" in d.find_element(By.TAG_NAME, "body").text, 90)
    _shot(browser, "run_success")

    _check_report_page(browser, dagster_dev)


def _check_report_page(driver, base: str) -> None:
    """``retrieval_eval``'s page, as a user opens it: the latest materialization's metric table,
    numbers and per-query movers are shown inline; the report image opens from its row and is
    decoded by the browser."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/assets/retrieval_eval?view=events")
    _wait(
        driver,
        lambda d: d.find_elements(By.XPATH, "//tr[td[normalize-space()='report']]"),
        120,
        "no report entry in retrieval_eval's metadata",
    )
    _dismiss_dialogs(driver, wait_s=3)
    # The metric table (rendered Markdown: a real <table>), the numbers and the per-query movers.
    tables = [t.text for t in driver.find_elements(By.TAG_NAME, "table")]
    assert any("NDCG@10" in t and "fine_tuned" in t and "delta_points" in t for t in tables), tables
    text = driver.find_element(By.TAG_NAME, "body").text
    for key in ("ndcg10_fine_tuned@synthetic-", "recall100_base@synthetic-", "forgetting_points@general-"):
        assert key in text, key
    assert "top_gains" in text and "base_rank" in text and "per_query_path" in text
    assert "ndcg10_delta_p_value" in text
    _shot(driver, "retrieval_eval_metadata")
    # A long Markdown value opens from its row: the report image.
    show = driver.find_element(
        By.XPATH, "//tr[td[normalize-space()='report']]//a[normalize-space()='[Show Markdown]']"
    )
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", show)
    _click(driver, show)
    image = _wait(
        driver,
        lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, "img[alt='report']")), False),
        30,
        "the report image did not open",
    )
    # Decoded and laid out by the browser, not merely present in the markup.
    _wait(
        driver,
        lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image),
    )
    width, height = driver.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image
    )
    assert width > 500 and height > 200
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert image.size["width"] > 300 and image.size["height"] > 150
    _shot(driver, "retrieval_eval_report")
