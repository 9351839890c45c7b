"""The MLflow UI as users see it: `mlflow ui` on a store a short sweep has filled, opened in
headless Chromium (Debian's chromium and chromium-driver, driven by Selenium).

Checks the experiment, the sweep's parent and child runs, a metric chart and the logged
model, and saves screenshots of the runs and of a chart (mlflow_ui.png, mlflow_ui_chart.png, mlflow_ui_grouped.png) in
the test's own folder; `make screenshots` (CH11_SCREENSHOTS=reports) refreshes the manual's copies,
so a plain `make test` leaves the work tree as it was.
"""

import os
import re
import shutil

import pytest
from conftest import REPO, cli, parent_and_children, quiet_env, shrunk, unavailable
from mlflow.tracking import MlflowClient
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from services import MlflowServer

pytestmark = pytest.mark.slow
SCREENSHOTS_ENV = "CH11_SCREENSHOTS"  # a folder (relative: to the repository) to save the screenshots in


def browser_paths() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    unavailable("headless Chromium is not installed: apt-get install chromium chromium-driver (.ci/run does)")


@pytest.fixture
def browser():  # one per test: a fresh profile, as the UI keeps a view's grouping in the browser's storage
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000",
                     "--disable-gpu", "--no-first-run"):
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(driver), options=options)  # no Selenium Manager: no download
    session.set_page_load_timeout(60)
    yield session
    session.quit()


@pytest.fixture(scope="module")
def swept_ui(tmp_path_factory, fashion_npz):
    """`mlflow ui` (what `make ui` starts) on a store filled by a sweep of 2 epochs: 2 arms x 2 seeds."""
    folder = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    result = cli("-m", "optimizer=adam,nadam", "seed=1,2", *shrunk(fashion_npz, store, folder, train_size=300),
                 f"hydra.sweep.dir={folder / 'sweep'}", env=quiet_env())
    assert result.returncode == 0, result.stderr[-3000:]
    with MlflowServer("ui", store, folder / "mlartifacts", folder / "ui.log") as server:
        yield server, store


def page_text(browser) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def wait_until(browser, condition, what: str, timeout_s: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout_s, poll_frequency=0.25).until(lambda session: condition(), what)


def wait_for_text(browser, *texts: str) -> str:
    wait_until(browser, lambda: all(text in page_text(browser) for text in texts), f"the page never showed {texts}")
    return page_text(browser)


def open_page(browser, url: str) -> None:
    """Open a page of the UI, in its model-training view, without the assistant panel."""
    browser.get(url)
    wait_until(browser, lambda: "Model training" in page_text(browser), f"{url} never rendered")
    for close in browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if close.is_displayed():
            close.click()


def save_screenshot(browser, path) -> None:
    partial = path.with_name(f".{path.stem}.partial.png")
    assert browser.save_screenshot(str(partial))
    partial.replace(path)


def test_the_ui_shows_the_experiment_the_sweep_its_children_a_metric_chart_and_the_model(browser, swept_ui, tmp_path):
    screenshots = REPO / os.environ[SCREENSHOTS_ENV] if os.environ.get(SCREENSHOTS_ENV) else tmp_path
    server, store = swept_ui
    experiment = MlflowClient(store).get_experiment_by_name("test")
    (parent,), children = parent_and_children(store)
    base = f"{server.uri}/#/experiments/{experiment.experiment_id}"

    # the experiment's runs: the sweep's parent, expanded to show its children
    open_page(browser, f"{base}/runs?workflowType=machine_learning")
    wait_for_text(browser, "test", parent.info.run_name, "fashion_mnist")
    assert not any(child.info.run_name in page_text(browser) for child in children)  # folded under the parent
    row = browser.find_element(By.XPATH, f"//*[@role='row'][.//*[text()='{parent.info.run_name}']]")
    row.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
    wait_for_text(browser, *(child.info.run_name.strip() for child in children))  # the page drops edge spaces
    save_screenshot(browser, screenshots / "mlflow_ui.png")

    # a child: its parent, metrics and logged model
    child = children[0]
    open_page(browser, f"{base}/runs/{child.info.run_id}")
    text = wait_for_text(browser, child.info.run_name, "Parent run", parent.info.run_name, "test_accuracy",
                         "Logged models (1)")
    assert str(child.data.metrics["test_accuracy"])[:6] in text

    # its metric charts: val_accuracy drawn over the 2 epochs
    open_page(browser, f"{base}/runs/{child.info.run_id}/model-metrics")
    search = wait_until(browser, lambda: browser.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric']"),
                        "no chart search box")
    search.send_keys("val_accuracy")

    def only_val_accuracy_drawn() -> bool:  # val_accuracy per epoch, and final_val_accuracy (also matched)
        charts = browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
        return (1 <= len(charts) <= 2 and "val_accuracy" in page_text(browser)
                and any(chart.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace") for chart in charts))

    wait_until(browser, only_val_accuracy_drawn, "the search never left the drawn val_accuracy charts")
    save_screenshot(browser, screenshots / "mlflow_ui_chart.png")


def test_grouped_by_arm_the_runs_table_shows_one_row_per_arm(browser, swept_ui, tmp_path):
    """The children's arm tag (src/aggregates.py) makes the UI's "Group by" show one row per arm,
    each with its seeds' runs (mlflow_ui_grouped.png); the parent holds the arms' aggregates."""
    screenshots = REPO / os.environ[SCREENSHOTS_ENV] if os.environ.get(SCREENSHOTS_ENV) else tmp_path
    server, store = swept_ui
    experiment = MlflowClient(store).get_experiment_by_name("test")
    (parent,), children = parent_and_children(store)
    assert {child.data.tags["arm"] for child in children} == {"adam", "nadam"}
    assert {"test_accuracy/adam/mean", "test_accuracy/nadam/ci95_high"} <= set(parent.data.metrics)

    open_page(browser, f"{server.uri}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")
    wait_for_text(browser, parent.info.run_name)
    group_runs_by(browser, "arm")
    text = wait_for_text(browser, "Group by: arm", "Group: adam", "Group: nadam")
    save_screenshot(browser, screenshots / "mlflow_ui_grouped.png")
    for arm in ("adam", "nadam"):  # one row per arm, counting its two seeds' runs
        assert re.search(rf"Group: {arm}\s+2\b", text), text
    assert re.search(r"Additional runs\s+1\b", text), text  # the parent has no arm


def group_runs_by(browser, tag: str) -> None:
    """The runs table's "Group by" menu: search the tag, tick it, close the menu."""
    def first(selector: str, matches):
        return next((element for element in browser.find_elements(By.CSS_SELECTOR, selector) if matches(element)),
                    None)

    wait_until(browser, lambda: first("button", lambda button: button.text.strip() == "Group by"),
               "no Group by button").click()
    wait_until(browser, lambda: first("input[placeholder='Search']", lambda box: box.is_displayed()),
               "no search box in the Group by menu").send_keys(tag)
    wait_until(browser, lambda: first("[role='menuitemcheckbox']", lambda item: item.text.strip() == tag),
               f"no {tag} tag to group by").click()
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()  # to the page: the menu re-renders its search box
