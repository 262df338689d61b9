#!/usr/bin/env python3
"""Drives the Bulwark dashboard in a real browser (Debian's Chromium through Playwright), as an operator would.

Usage: dashboard-check.py URL CA CERT KEY DEVICE REPLAY-COMMAND SCREENSHOTS

URL is the operator listener (https://localhost:PORT); CA, CERT and KEY the operator's files; DEVICE a paired device
whose page carries XSS payloads; REPLAY-COMMAND a shell command that replays a captured signed request of that
device; SCREENSHOTS a directory for overview.png and device.png. Prints one JSON object with what it saw; exits 1
when a check failed. It never downloads a browser: it uses /usr/bin/chromium.
"""
import functools
import http.server
import json
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

from playwright.sync_api import sync_playwright


def main():
    url, ca, cert, key, device, replay, shots = sys.argv[1:8]
    seen = {"failures": []}

    def check(condition, what):
        if not condition:
            seen["failures"].append(what)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            # No client certificate: the hub completes no handshake, the browser gets nothing.
            anonymous = browser.new_context(ignore_https_errors=True)
            page = anonymous.new_page()
            try:
                response = page.goto(url + "/ui", timeout=10000)
                seen["anonymous"] = response.status if response else None
                check(response is None or response.status >= 400, "a browser without a certificate got a page")
            except Exception as error:  # the expected outcome: the TLS handshake fails
                seen["anonymous"] = type(error).__name__ + ": " + str(error).splitlines()[0][:120]
            anonymous.close()

            context = browser.new_context(
                ignore_https_errors=True,
                client_certificates=[{"origin": url, "certPath": cert, "keyPath": key}],
            )
            page = context.new_page()
            dialogs = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

            response = page.goto(url + "/ui")
            check(response.status == 200, "overview status %s" % response.status)
            csp = response.headers.get("content-security-policy", "")
            seen["csp"] = csp
            check("script-src 'self'" in csp and "frame-ancestors 'none'" in csp, "CSP missing on the overview")
            check(page.locator("#devices tr[data-device='%s']" % device).count() == 1, "the device is not listed")
            page.screenshot(path=shots + "/overview.png", full_page=False)

            response = page.goto(url + "/ui/devices/" + device)
            check(response.status == 200, "device page status %s" % response.status)
            page.screenshot(path=shots + "/device.png", full_page=True)
            body = page.locator("#messages").inner_text()
            check("<script>" in body, "the message body is not shown as text")
            check(page.evaluate("window.__xss === undefined"), "an injected script ran")
            check(not dialogs, "an injected script opened a dialog: %s" % dialogs)

            # Live events: a replay shows up within 2 s.
            page.goto(url + "/ui/events")
            page.wait_for_timeout(800)
            before = page.locator("#events tr").count()
            # The clock starts once the hub has answered the replay (it records the event before it answers), so
            # what is measured is the dashboard's part: the store, the event stream and the page. Spawning curl and
            # its TLS handshake are not (they took most of 2.5 s once on a loaded runner).
            sent = time.monotonic()
            subprocess.run(replay, shell=True, check=False, capture_output=True, timeout=20)
            started = time.monotonic()
            seen["replayRequestSeconds"] = round(started - sent, 3)
            try:
                page.wait_for_function(
                    "n => document.querySelectorAll('#events tr').length > n "
                    "&& [...document.querySelectorAll('#events tr')].some(r => r.innerText.includes('replay'))",
                    arg=before, timeout=5000)
                seen["liveEventSeconds"] = round(time.monotonic() - started, 3)
                check(seen["liveEventSeconds"] <= 2.0, "the replay took %.2f s to appear" % seen["liveEventSeconds"])
            except Exception:
                check(False, "the replay never appeared in the live events")
            check(page.evaluate("window.__xss === undefined"), "an injected script ran on the events page")

            # A page on another origin (a local server on another port) tries to revoke the device with a form post
            # and to claim a label with a no-cors fetch: the browser sends the operator's certificate with both, and
            # the hub must refuse both.
            attack = tempfile.mkdtemp()
            with open(os.path.join(attack, "attack.html"), "w") as page_file:
                page_file.write(
                    '<!doctype html><html><body><form id="f" method="post" action="%s/v1/devices/%s/revoke"></form>'
                    '<script>fetch("%s/v1/pairing/claims", {method: "POST", mode: "no-cors", credentials: "include",'
                    ' headers: {"Content-Type": "text/plain"}, body: \'{"label":"x"}\'})'
                    '.finally(function () { document.getElementById("f").submit(); });</script></body></html>'
                    % (url, device, url))

            class Quiet(http.server.SimpleHTTPRequestHandler):
                def log_message(self, *args):
                    pass

            server = socketserver.TCPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=attack))
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                page.goto("http://127.0.0.1:%d/attack.html" % server.server_address[1])
                page.wait_for_timeout(2000)
                seen["crossSiteAnswer"] = page.locator("body").inner_text()[:160]
            finally:
                server.shutdown()
                shutil.rmtree(attack, ignore_errors=True)
            page.goto(url + "/ui/devices/" + device)
            check(page.locator("#device-status").inner_text() == "active", "a cross-site page revoked the device")

            # Revoke through the UI, with its confirmation step.
            page.goto(url + "/ui/devices/" + device)
            page.click("button[data-action=revoke]")
            check(page.locator("#confirm").is_visible(), "no confirmation step before revoking")
            page.click("#confirm-yes")
            # The page says so, then reloads itself and says it again (the outcome is kept across the reload): poll,
            # as a navigation in between ends any single wait.
            said = ""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not said.startswith("Revoked"):
                try:
                    said = page.evaluate("(document.getElementById('status') || {}).textContent || ''")
                except Exception:
                    pass
                if not said.startswith("Revoked"):
                    time.sleep(0.1)
            check(said.startswith("Revoked"), "revoking through the UI did not say so")
            seen["status"] = said
            # The page reloads itself 300 ms after an action succeeds; a navigation of ours that meets that reload
            # is aborted (net::ERR_ABORTED on a loaded run), so let it land first and retry once if they still meet.
            page.wait_for_timeout(1000)
            try:
                page.goto(url + "/ui/devices/" + device)
            except Exception:
                page.wait_for_timeout(1000)
                page.goto(url + "/ui/devices/" + device)
            seen["deviceStatus"] = page.locator("#device-status").inner_text()
            check(seen["deviceStatus"] == "revoked", "the device page does not say revoked")

            # A form-encoded POST (what an HTML form sends) is refused even from the dashboard's own origin.
            cross = page.evaluate(
                """async () => {
                    const r = await fetch('/ui/actions/devices/x/revoke', {method: 'POST', body: 'a=b',
                        headers: {'Content-Type': 'application/x-www-form-urlencoded'}});
                    return r.status; }""")
            seen["formPost"] = cross
            check(cross in (403, 415), "a form-encoded POST was accepted: %s" % cross)
            context.close()
        finally:
            browser.close()
    print(json.dumps(seen))
    sys.exit(1 if seen["failures"] else 0)


if __name__ == "__main__":
    main()
