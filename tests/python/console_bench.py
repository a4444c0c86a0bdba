"""Measures the web console's page load: `make bench`'s `console` scenario.

Usage: console_bench.py CONSOLE_URL CA_FILE TASKS   (BERTH_TOKEN, CHROME_PROFILE from the
environment)

Five times: navigate to the console (signed in: the token is in the tab's session storage, as
after a sign-in) on the Tasks view, and wait until the page holds every task and has drawn the
view; prints `load_ms N` for each, the time from the navigation's start (the page's
`performance.now()` when it first drew everything). The browser resolves no name and trusts
only the key whose certificate checks against the cluster CA.
"""

import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from console_test import browser, spki_pin, wait_for  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def main():
    url, ca, tasks = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ.setdefault("SHOTS", os.path.dirname(os.environ["CHROME_PROFILE"]))
    driver = browser(spki_pin(url, ca), urllib.parse.urlsplit(url).hostname)
    try:
        driver.get(url)
        driver.execute_script(
            "sessionStorage.setItem('berth.token', arguments[0]);", os.environ["BERTH_TOKEN"]
        )
        for _ in range(5):
            driver.get(url)
            wait_for(driver, "the page to hold every task",
                     lambda d: d.execute_script("return document.documentElement.dataset.syncedMs"),
                     timeout=300)
            status = driver.find_element(By.ID, "status").text
            if f"{tasks} tasks" not in status and f"{tasks + 1} tasks" not in status:
                raise SystemExit(f"the page holds {status!r}, not {tasks} tasks")
            ms = driver.execute_script("return Number(document.documentElement.dataset.syncedMs)")
            print(f"load_ms {ms}", flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
