"""Drives berth's web console in a real headless browser (Debian's chromium through its
chromedriver, with selenium from PyPI) against a real cluster.

Usage: console_test.py CONSOLE_URL CA_FILE BERTH SERVER SHOTS_DIR

Tokens come from the environment: ADMIN_TOKEN and VIEWER_TOKEN (a viewer of `default`). The
browser resolves no name (every lookup fails but 127.0.0.1's), so nothing leaves the machine,
and it trusts exactly the key the server presents once Python checked that key's certificate
against the cluster CA. The test signs in, watches a service it creates roll out live, scales it
from the page, reads a task's logs, and checks that a viewer's scale button is disabled; it
saves a screenshot of each view in SHOTS_DIR. Prints "ok: ..." and exits 0 when all holds.
"""

import base64
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

TIMEOUT = 60


def der_items(data):
    """The (tag, whole item, content) of each DER item in `data`."""
    items, i = [], 0
    while i < len(data):
        tag, length, i0 = data[i], data[i + 1], i
        i += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(data[i : i + n], "big")
            i += n
        items.append((tag, data[i0 : i + length], data[i : i + length]))
        i += length
    return items


def spki_pin(url, ca_file):
    """The base64 SHA-256 of the public key the server at `url` presents, once its certificate
    checks against the cluster CA (as chromium's --ignore-certificate-errors-spki-list takes)."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    (_, _, certificate), = der_items(der)
    tbs = der_items(certificate)[0][2]
    fields = der_items(tbs)
    # [0] version (explicit, optional), serial, signature, issuer, validity, subject, SPKI.
    offset = 1 if fields[0][0] == 0xA0 else 0
    spki = fields[offset + 5][1]
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def browser(pin, host):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        # Nothing resolves but the console's own address: no lookup leaves the machine.
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={os.environ['CHROME_PROFILE']}",
        f"--ignore-certificate-errors-spki-list={pin}",
    ]:
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def berth(binary, server, *args):
    out = subprocess.run([binary, "--server", server, *args], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"berth {' '.join(args)}: {out.stderr}")
    return out.stdout


def wait_for(driver, what, condition, timeout=TIMEOUT):
    try:
        # The page updates as the cluster changes: an element read between two updates may
        # have been replaced, and the next poll reads it again.
        return WebDriverWait(
            driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
        ).until(condition)
    except Exception as e:
        status = driver.find_element(By.ID, "status").text
        shown = driver.find_element(By.ID, "main").text[:1500]
        driver.save_screenshot(os.path.join(os.environ.get("SHOTS", "."), "failed.png"))
        raise SystemExit(f"timed out waiting for {what} (status: {status!r}); the page shows:\n{shown}\n{e}")


def click(driver, selector):
    """Clicks the element `selector` names (found again if the page replaced it)."""

    def clicked(d):
        d.find_element(By.CSS_SELECTOR, selector).click()
        return True

    wait_for(driver, f"{selector} to click", clicked)


def card_number(driver, service, cls):
    """A count on a service's card, read in one step in the page: the card's counts are made
    anew at every update, so an element found first and read after may be gone by then."""
    return driver.execute_script(
        "const b = document.querySelector(`[data-service=\"${arguments[0]}\"] b.${arguments[1]}`);"
        " return b ? b.textContent : null;",
        service,
        cls,
    )


def sign_in(driver, url, token):
    driver.get(url)
    box = wait_for(driver, "the sign-in form", ec.presence_of_element_located((By.ID, "token")))
    box.send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, "the navigation", ec.visibility_of_element_located((By.ID, "nav")))


def view(driver, name):
    driver.find_element(By.CSS_SELECTOR, f'#nav button[data-view="{name}"]').click()
    wait_for(driver, f"the {name} view", lambda d: d.find_element(By.ID, "main").get_attribute("data-view") == name)


def main():
    url, ca, binary, server, shots = sys.argv[1:6]
    image = os.environ["IMAGE"]
    os.makedirs(shots, exist_ok=True)
    os.environ["SHOTS"] = shots
    pin = spki_pin(url, ca)
    driver = browser(pin, urllib.parse.urlsplit(url).hostname)
    try:
        # The shell comes without a token, with a strict policy; its data calls need one.
        context = ssl.create_default_context(cafile=ca)
        with urllib.request.urlopen(url, context=context, timeout=10) as shell:
            policy = shell.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy, policy
        try:
            urllib.request.urlopen(url + "api/session", context=context, timeout=10)
            raise SystemExit("a data call without a token was answered")
        except urllib.error.HTTPError as e:
            assert e.code == 401, e.code
        driver.get(url)
        wait_for(driver, "the sign-in form", ec.presence_of_element_located((By.ID, "token")))
        driver.save_screenshot(os.path.join(shots, "sign-in.png"))

        sign_in(driver, url, os.environ["ADMIN_TOKEN"])
        view(driver, "cluster")
        wait_for(driver, "the leader in the servers table",
                 lambda d: "leader" in d.find_element(By.ID, "servers").text)
        wait_for(driver, "node-1 in the nodes table",
                 lambda d: "node-1" in d.find_element(By.ID, "nodes").text)

        # A service created while the page is open rolls out before our eyes.
        view(driver, "services")
        manifest = os.path.join(shots, "web.yaml")
        with open(manifest, "w") as f:
            f.write(
                "apiVersion: berth.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n"
                "  desiredCount: 2\n  template:\n    cpu: 128\n    memory: 32\n    containers:\n"
                f"      - name: web\n        image: {image}\n"
                "        command: [sh, -c, 'echo hello from the console test; while true; do echo tick; sleep 1; done']\n"
                "        stopTimeout: 1s\n"
            )
        berth(binary, server, "apply", "-f", manifest)
        wait_for(driver, "the service card", ec.presence_of_element_located((By.CSS_SELECTOR, '[data-service="web"]')))
        wait_for(driver, "2 running tasks", lambda d: card_number(d, "web", "running") == "2")
        wait_for(driver, "the rollout to complete",
                 lambda d: "COMPLETED" in d.find_element(By.CSS_SELECTOR, '[data-service="web"] .deployments').text)
        driver.save_screenshot(os.path.join(shots, "services.png"))

        # Scale from the page.
        card = driver.find_element(By.CSS_SELECTOR, '[data-service="web"]')
        count = card.find_element(By.CSS_SELECTOR, 'input[type="number"]')
        # An empty box scales nothing: the page says what it needs.
        driver.execute_script(
            "arguments[0].value = ''; arguments[0].dispatchEvent(new Event('input'));", count
        )
        card.find_element(By.CSS_SELECTOR, 'button[data-action="scale"]').click()
        wait_for(driver, "the refusal of an empty count", lambda d: "whole number" in card.text)
        assert card_number(driver, "web", "desired") == "2"
        driver.execute_script(
            "arguments[0].value = '1'; arguments[0].dispatchEvent(new Event('input'));", count
        )
        card.find_element(By.CSS_SELECTOR, 'button[data-action="scale"]').click()
        wait_for(driver, "desired 1", lambda d: card_number(d, "web", "desired") == "1")
        wait_for(driver, "1 running", lambda d: card_number(d, "web", "running") == "1")
        listed = berth(binary, server, "get", "services", "-o", "json")
        assert '"desiredCount": 1' in listed, listed

        # A new revision rolls out; Roll back brings the one before it back.
        with open(manifest) as f:
            text = f.read()
        with open(manifest, "w") as f:
            # (desiredCount as scaled above: a manifest is the whole of what it declares)
            f.write(text.replace("stopTimeout: 1s", "stopTimeout: 2s").replace("desiredCount: 2", "desiredCount: 1"))
        berth(binary, server, "apply", "-f", manifest)
        wait_for(driver, "web:2 to roll out",
                 lambda d: "task definition web:2" in d.find_element(By.CSS_SELECTOR, '[data-service="web"]').text
                 and "COMPLETED" in d.find_element(By.CSS_SELECTOR, '[data-service="web"] .deployments').text)
        click(driver, '[data-service="web"] button[data-action="rollback"]')
        wait_for(driver, "the roll back to web:1",
                 lambda d: "task definition web:1" in d.find_element(By.CSS_SELECTOR, '[data-service="web"]').text
                 and "COMPLETED" in d.find_element(By.CSS_SELECTOR, '[data-service="web"] .deployments').text)

        # The node's bars show what the service's task reserves; an admin drains and
        # activates it from the page.
        view(driver, "cluster")
        wait_for(driver, "the task's reservation on node-1",
                 lambda d: "\n128 / 2048" in d.find_element(By.ID, "nodes").text)
        driver.save_screenshot(os.path.join(shots, "cluster.png"))
        click(driver, '#nodes button[data-node-action="DRAINING"]')
        wait_for(driver, "the drain's confirmation", ec.alert_is_present()).accept()
        wait_for(driver, "node-1 draining", lambda d: "DRAINING" in d.find_element(By.ID, "nodes").text)
        click(driver, '#nodes button[data-node-action="ACTIVE"]')
        wait_for(driver, "node-1 active again",
                 lambda d: "DRAINING" not in d.find_element(By.ID, "nodes").text
                 and "ACTIVE" in d.find_element(By.ID, "nodes").text)

        # A task's detail and its logs, followed.
        view(driver, "tasks")

        def click_running(d):
            for row in d.find_elements(By.CSS_SELECTOR, "#tasks tr[data-task]"):
                if "RUNNING" in row.text:
                    row.click()
                    return True
            return False

        wait_for(driver, "a running task to click", click_running)
        wait_for(driver, "the task's logs",
                 lambda d: "hello from the console test" in d.find_element(By.ID, "logs").text)
        # Its CPU and memory against what it reserves, from its node's samples.
        wait_for(driver, "the task's chart", lambda d: d.find_elements(By.CSS_SELECTOR, "#task-chart canvas"))
        # Followed: lines written after the view opened arrive.
        ticks = driver.find_element(By.ID, "logs").text.count("tick")
        wait_for(driver, "more lines", lambda d: d.find_element(By.ID, "logs").text.count("tick") >= ticks + 2)
        driver.save_screenshot(os.path.join(shots, "tasks.png"))

        # What the namespace used: the ledger as a chart and a table, exportable as CSV.
        view(driver, "usage")
        wait_for(driver, "the service's usage",
                 lambda d: "web" in d.find_element(By.ID, "usage-table").text)
        wait_for(driver, "the usage chart", lambda d: d.find_elements(By.CSS_SELECTOR, "#usage-chart canvas"))
        assert driver.find_element(By.ID, "export-csv").is_enabled()
        driver.save_screenshot(os.path.join(shots, "usage.png"))

        # A viewer sees the service but cannot scale it.
        driver.find_element(By.ID, "sign-out").click()
        sign_in(driver, url, os.environ["VIEWER_TOKEN"])
        view(driver, "services")
        wait_for(driver, "the service card", ec.presence_of_element_located((By.CSS_SELECTOR, '[data-service="web"]')))
        button = driver.find_element(By.CSS_SELECTOR, '[data-service="web"] button[data-action="scale"]')
        assert not button.is_enabled(), "a viewer's scale button is enabled"
        driver.save_screenshot(os.path.join(shots, "viewer.png"))
        # And the gateway refuses a viewer's scale whatever the page shows.
        refused = driver.execute_async_script(
            """const done = arguments[arguments.length - 1];
            fetch('api/scale?namespace=default', {method: 'POST',
              headers: {'Authorization': 'Bearer ' + arguments[0], 'Content-Type': 'application/json'},
              body: JSON.stringify({name: 'web', desiredCount: 3})}).then(r => done(r.status));""",
            os.environ["VIEWER_TOKEN"],
        )
        assert refused == 403, refused
        # Nor may it read another namespace through the console's calls.
        for path in ["api/watch?namespace=kube-system", "api/logs?namespace=kube-system&task=x"]:
            status = driver.execute_async_script(
                """const done = arguments[arguments.length - 1];
                fetch(arguments[1], {headers: {'Authorization': 'Bearer ' + arguments[0]}})
                  .then(r => done(r.status));""",
                os.environ["VIEWER_TOKEN"],
                path,
            )
            assert status == 403, (path, status)

        # An admin again: an autoscaled service's metric against its target and its desired
        # count, charted; then Delete, confirmed, drains the first service.
        driver.find_element(By.ID, "sign-out").click()
        sign_in(driver, url, os.environ["ADMIN_TOKEN"])
        view(driver, "services")
        scaled = os.path.join(shots, "auto.yaml")
        with open(scaled, "w") as f:
            f.write(
                "apiVersion: berth.dev/v1\nkind: Service\nmetadata:\n  name: auto\nspec:\n"
                "  desiredCount: 1\n  autoscaling:\n    minCount: 1\n    maxCount: 2\n"
                "    targetTracking:\n      - {metric: MemoryUtilization, target: 70}\n"
                "  template:\n    cpu: 64\n    memory: 32\n    containers:\n"
                f"      - name: auto\n        image: {image}\n        command: [sleep, '600']\n"
                "        stopTimeout: 1s\n"
            )
        berth(binary, server, "apply", "-f", scaled)
        wait_for(driver, "the autoscaling chart",
                 lambda d: d.find_elements(By.CSS_SELECTOR, '[data-service="auto"] .chart canvas'),
                 timeout=90)
        driver.save_screenshot(os.path.join(shots, "autoscaling.png"))
        click(driver, '[data-service="web"] button[data-action="delete"]')
        wait_for(driver, "the delete's confirmation", ec.alert_is_present()).accept()
        wait_for(driver, "web to drain or go",
                 lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-service="web"]')
                 or "DRAINING" in d.find_element(By.CSS_SELECTOR, '[data-service="web"] h3').text)
        # The page broke no rule of its policy and threw no error. (Network errors are not
        # counted: the forbidden scale above is one, and the task network's interfaces coming
        # and going make chromium cut its streams, which the page opens again.)
        errors = [
            e for e in driver.get_log("browser")
            if e.get("source") == "javascript"
            or "Content Security Policy" in e.get("message", "")
            or "Refused to" in e.get("message", "")
        ]
        assert not errors, errors
    finally:
        driver.quit()
    print("ok: the console signed in, showed a rollout live, scaled, followed logs, refused a viewer")


if __name__ == "__main__":
    main()
