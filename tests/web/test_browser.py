"""The explorer in a real browser (headless Chromium through Selenium and the system chromedriver):
click through the pages, hover and brush the charts, compare what is shown with SQL, and check
that a sample full of HTML runs nothing.

MIWV_SCREENSHOTS=docs also saves a screenshot of each page there (the README shows them).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.web.conftest import MODEL, served, sql

pytestmark = [pytest.mark.slow, pytest.mark.browser]
INSTALL = "headless Chromium not found; install it with: apt-get install chromium chromium-driver"


@pytest.fixture(scope="module")
def server(explored: Path):
    """The app over the explored catalog, served in a thread."""
    with served(explored) as url:
        yield url


# Selenium and Chromium never try the network. Selenium Manager (it downloads drivers and sends
# usage statistics) is never run, as the installed driver is given; were it run anyway, it would
# fail at once (SE_MANAGER_PATH names no file), and SE_OFFLINE / SE_AVOID_STATS keep it off the
# network. Chromium's background services are off and it reaches no host but the test server's.
NO_NETWORK_ENV = {
    "SE_AVOID_STATS": "true",
    "SE_OFFLINE": "true",
    "SE_MANAGER_PATH": "/nonexistent/selenium-manager-must-not-run",
}
CHROMIUM_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-sync",
    "--no-default-browser-check",
    "--no-first-run",
    "--no-pings",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(INSTALL)
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in CHROMIUM_ARGUMENTS:
        options.add_argument(argument)
    with pytest.MonkeyPatch.context() as env:
        for name, value in NO_NETWORK_ENV.items():
            env.setenv(name, value)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
        driver.implicitly_wait(5)
        yield driver
        driver.quit()


def shoot(browser, name: str) -> None:
    """Save the whole page as docs/NAME.png when MIWV_SCREENSHOTS names a folder."""
    folder = os.environ.get("MIWV_SCREENSHOTS")
    if not folder:
        return
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(max(height, 800), 2600))
    Path(folder).mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(Path(folder) / f"{name}.png"))
    browser.set_window_size(1400, 1000)


def shown_ids(browser) -> list[int]:
    from selenium.webdriver.common.by import By

    return [int(a.text) for a in browser.find_elements(By.CSS_SELECTOR, "table.samples td:first-child a.id")]


def wait_for_url(browser, part: str) -> None:
    deadline = time.monotonic() + 10
    while part not in browser.current_url and time.monotonic() < deadline:
        time.sleep(0.05)
    assert part in browser.current_url


def test_click_through_overview_model_samples_and_a_sample(browser, server: str, explored: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    shoot(browser, "web_overview")
    browser.find_element(By.CSS_SELECTOR, ".card h3 a").click()
    wait_for_url(browser, f"/models/{MODEL}")
    scorer = int(browser.current_url.split("scorer=")[1])

    # Hovering a point shows its sample's text (as text) in the tooltip.
    point = browser.find_elements(By.CSS_SELECTOR, "#scatter circle.point")[0]
    ActionChains(browser).move_to_element(point).perform()
    tip = browser.find_element(By.ID, "tip")
    assert tip.is_displayed() and point.get_attribute("data-tip")[:40] in tip.text
    shoot(browser, "web_model")

    # Brushing a range of the histogram opens exactly the samples in it.
    histogram = browser.find_element(By.ID, "histogram")
    width = histogram.size["width"]
    ActionChains(browser).move_to_element_with_offset(histogram, -width // 4, 0).click_and_hold().move_by_offset(
        width // 2, 0
    ).release().perform()
    wait_for_url(browser, "miwv_max=")
    params = dict(p.split("=") for p in browser.current_url.split("?")[1].split("&"))
    expected = sql(
        explored,
        f"SELECT sample_id FROM miwv_scores WHERE scorer_id = {scorer} AND miwv BETWEEN {params['miwv_min']} "
        f"AND {params['miwv_max']} ORDER BY miwv DESC NULLS LAST, sample_id",
    )
    assert shown_ids(browser) == [r["sample_id"] for r in expected]

    # A click on a bar opens that bin's samples.
    browser.back()
    wait_for_url(browser, f"/models/{MODEL}?scorer=")
    browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bar")[-1].click()
    wait_for_url(browser, "miwv_min=")
    assert shown_ids(browser)

    # The samples table, sorted by L_zero, and the page of one sample.
    browser.get(f"{server}/models/{MODEL}/samples?scorer={scorer}")
    browser.find_element(By.LINK_TEXT, "zero_shot_loss").click()
    wait_for_url(browser, "sort=zero_shot_loss")
    expected = sql(
        explored,
        f"SELECT sample_id FROM miwv_scores WHERE scorer_id = {scorer} "
        "ORDER BY zero_shot_loss DESC NULLS LAST, sample_id",
    )
    assert shown_ids(browser) == [r["sample_id"] for r in expected]
    browser.get(f"{server}/models/{MODEL}/samples?scorer={scorer}")
    shoot(browser, "web_samples")
    first = shown_ids(browser)[0]
    browser.find_element(By.CSS_SELECTOR, "table.samples td:first-child a.id").click()
    wait_for_url(browser, f"/samples/{first}")
    link = sql(explored, f"SELECT neighbour_id, similarity FROM neighbours WHERE sample_id = {first}")[0]
    assert f"cosine {link['similarity']:.4f}" in browser.find_element(By.TAG_NAME, "main").text
    assert browser.find_elements(By.CSS_SELECTOR, "pre.tokens .scored")
    shoot(browser, "web_sample")


def test_a_selection_diff_from_the_form(browser, server: str, explored: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(server + "/selections")
    Select(browser.find_element(By.NAME, "a")).select_by_value("1")
    Select(browser.find_element(By.NAME, "b")).select_by_value("2")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for_url(browser, "/selections/1/vs/2")
    members = "SELECT sample_id FROM selection_member WHERE selection_id = "
    both = sql(explored, f"SELECT count(*) AS n FROM ({members}1 INTERSECT {members}2)")[0]["n"]
    only_a = sql(explored, f"SELECT count(*) AS n FROM ({members}1 EXCEPT {members}2)")[0]["n"]
    assert browser.find_element(By.ID, "in-both").text == str(both)
    assert browser.find_element(By.ID, "only-a").text == str(only_a)
    shoot(browser, "web_selection_diff")


def test_sample_html_runs_nothing(browser, server: str, hostile_id: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    def untouched() -> None:
        assert browser.execute_script("return window.__pwned === undefined")
        assert "pwned" not in browser.title

    browser.get(f"{server}/samples/{hostile_id}")
    assert "<script>window.__pwned = 1" in browser.find_element(By.CSS_SELECTOR, "pre.content").text
    untouched()
    browser.get(f"{server}/models/{MODEL}/samples?scorer=1&dataset=hostile")
    assert shown_ids(browser) == [hostile_id]
    untouched()
    browser.get(f"{server}/models/{MODEL}?scorer=1")
    point = browser.find_element(By.CSS_SELECTOR, f'#scatter a[href="/samples/{hostile_id}"] circle')
    ActionChains(browser).move_to_element(point).perform()
    assert "<img src=x onerror=" in browser.find_element(By.ID, "tip").text
    untouched()


def test_selenium_manager_never_runs_and_chromium_reaches_no_outside_host(browser) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchDriverException, WebDriverException
    from selenium.webdriver.common.by import By

    assert browser.service.path == shutil.which("chromedriver")  # the installed driver, not a download
    assert {name: os.environ.get(name) for name in NO_NETWORK_ENV} == NO_NETWORK_ENV
    with pytest.raises(NoSuchDriverException):  # the browser above started where Selenium Manager cannot run
        webdriver.Chrome(options=webdriver.ChromeOptions())
    browser.get("chrome://version")
    command_line = browser.find_element(By.ID, "command_line").text
    assert all(argument.split("=")[0] in command_line for argument in CHROMIUM_ARGUMENTS)
    with pytest.raises(WebDriverException, match="ERR_NAME_NOT_RESOLVED"):  # mapped to "not found": never looked up
        browser.get("http://example.com/")
