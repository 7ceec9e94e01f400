"""The dashboard in headless Chromium (the distribution's chromium and chromedriver, via Selenium).

Skipped with a reason when the browser is missing, except under ``CI=true``,
where a browser test that cannot run fails. With ``CONVEYOR_SCREENSHOTS=DIR``
each page is also saved as a PNG in DIR (that is how docs/ screenshots are made).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import conveyor

from .conftest import TASKS
from .dashboard_helpers import Dashboard

WAIT = 30  # seconds a browser condition may take


def _need(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        _need("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    # Chromium leaves shared-memory files (org.chromium.Chromium.*) in its TMPDIR: give it a
    # folder of its own, removed after it quits. A short path: its sockets live there too.
    scratch = tempfile.mkdtemp(prefix="chromium-")
    try:
        drv = webdriver.Chrome(service=Service(chromedriver, env={**os.environ, "TMPDIR": scratch}),
                               options=opts)
        try:
            yield drv
        finally:
            drv.quit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def dashboards():
    made: list[Dashboard] = []

    def make(cluster, *args, **kwargs) -> Dashboard:
        d = Dashboard(cluster, *args, **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def shot(drv, name: str) -> None:
    """Save a screenshot when CONVEYOR_SCREENSHOTS names a folder."""
    folder = os.environ.get("CONVEYOR_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(Path(folder) / f"dashboard-{name}.png"))


def text_of(drv, css: str) -> str:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.CSS_SELECTOR, css).text


def until(drv, predicate) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # An element htmx swapped out between the find and the read is looked for again.
    WebDriverWait(drv, WAIT, poll_frequency=0.1,
                  ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: predicate())


def test_overview_counter_moves_while_tasks_run(cluster, dashboards, driver):
    d = dashboards(cluster)
    driver.get(d.url + "/")
    until(driver, lambda: text_of(driver, "#workers-count") == "2")
    before = int(text_of(driver, "#completed-total"))
    driver.execute_script("window.notReloaded = true")  # gone if the page were reloaded
    with cluster.client() as c:
        futures = c.submit_many(f"{TASKS}:slow_square", [(i, 0.02) for i in range(200)])
        assert [f.result(60) for f in futures][:3] == [0, 1, 4]
    # htmx refreshes the live part in place: the counter reaches the new total, same page.
    until(driver, lambda: int(text_of(driver, "#completed-total")) == before + 200)
    assert driver.execute_script("return window.notReloaded") is True
    until(driver, lambda: driver.execute_script(
        "return document.querySelectorAll('#chart-rates canvas').length") == 1)
    shot(driver, "overview")


def test_filter_failed_open_traceback_retry_and_bulk_retry(cluster, dashboards, driver, tmp_path):
    from selenium.webdriver.common.by import By

    d = dashboards(cluster)
    with cluster.client() as c:
        flaky = [c.submit(f"{TASKS}:flaky", str(tmp_path / f"f{i}"), 1) for i in range(3)]
        ok = [c.submit(f"{TASKS}:square", i) for i in range(5)]
        for f in flaky:
            with pytest.raises(conveyor.TaskError):
                f.result(30)
        [f.result(30) for f in ok]
    driver.get(d.url + "/tasks")
    driver.find_element(By.CSS_SELECTOR, "input[name=state][value=failed]").click()
    driver.find_element(By.ID, "apply-filter").click()
    until(driver, lambda: "3 task(s) match" in text_of(driver, "#match-count"))
    shot(driver, "tasks")
    driver.find_elements(By.CSS_SELECTOR, "a.task-link")[0].click()
    until(driver, lambda: "flaky failure 1" in text_of(driver, "#task-result"))
    assert "Traceback (most recent call last)" in text_of(driver, "#task-result")
    assert text_of(driver, "#task-state") == "failed"
    shot(driver, "task")
    driver.find_element(By.ID, "retry").click()
    until(driver, lambda: text_of(driver, "#task-state") == "succeeded")
    # Bulk retry of what the filter selects: the other two.
    driver.get(d.url + "/tasks?state=failed")
    driver.find_element(By.ID, "bulk-retry").click()
    until(driver, lambda: "Retry 2 task(s)" in text_of(driver, "#bulk-confirm"))
    driver.find_element(By.ID, "bulk-confirm").click()
    until(driver, lambda: "retried 2 of 2 selected task(s)" in text_of(driver, "#message"))
    with cluster.client() as c:
        assert [c.result(f.task_id, 30) for f in flaky] == ["ok"] * 3
    driver.get(d.url + "/queues")
    shot(driver, "queues")
    driver.get(d.url + "/workers")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#workers tbody tr")) == 2
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#workers td.pool")] == ["process"] * 2
    shot(driver, "workers")
    with cluster.client() as c:
        c.schedule("nightly-square", f"{TASKS}:square", 12, cron="0 3 * * *")
    driver.get(d.url + "/schedules")
    assert "nightly-square" in text_of(driver, "#schedules")
    shot(driver, "schedules")
    # Run now: the master enqueues the schedule's task; the page shows it running to its end.
    driver.find_element(By.CSS_SELECTOR, 'tr[data-schedule="nightly-square"] form[action$="/run"] button').click()
    until(driver, lambda: "/tasks/" in driver.current_url)
    until(driver, lambda: text_of(driver, "#task-state") == "succeeded")


def test_log_in(cluster, dashboards, driver, tmp_path):
    from selenium.webdriver.common.by import By

    secret = tmp_path / "login"
    secret.write_text("correct horse\n")
    d = dashboards(cluster, "--login-required", "--login-file", str(secret))
    driver.get(d.url + "/workers")
    until(driver, lambda: driver.current_url.startswith(d.url + "/login"))
    shot(driver, "login")
    driver.find_element(By.ID, "secret").send_keys("wrong")
    driver.find_element(By.ID, "login-button").click()
    until(driver, lambda: "wrong password or token" in driver.page_source)
    driver.find_element(By.ID, "secret").send_keys("correct horse")
    driver.find_element(By.ID, "login-button").click()
    until(driver, lambda: driver.current_url == d.url + "/workers")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#workers tbody tr")) == 2
