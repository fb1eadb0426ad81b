"""Run inside a network namespace by ``test_dashboard_browser.py``: a gateway bound to a non-loopback address
(so it requires a token), the registry, and headless Chromium signing in to it. Prints one JSON line of what
the browser saw; the test asserts on it.

    ip netns exec NS python dashboard_remote.py ADDRESS WORKDIR
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from halo_common.natsproc import NatsProcess, free_port
from playwright.sync_api import sync_playwright

TOKEN = "remote-operator-token-0123456789"


def main(address: str, work: Path) -> dict[str, object]:
    nats = NatsProcess.start(work / "nats", log_file=work / "nats.log")
    port = free_port(address)
    base = f"http://{address}:{port}"
    env = {**os.environ, "HALO_HOME": str(work / "home"), **nats.client_env(), "HALO_LOG_JSON": "false",
           "HALO_GATEWAY_HOST": address, "HALO_GATEWAY_PORT": str(port), "HALO_GATEWAY_TOKEN": TOKEN}
    procs = [subprocess.Popen([sys.executable, "-m", m], env=env, stdout=(work / f"{m}.log").open("wb"),
                              stderr=subprocess.STDOUT, start_new_session=True) for m in ("halo_gateway", "halo_registry")]
    seen: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{base}/api/v1/services", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
                if {"registry"} <= {s["name"] for s in r.json()["services"] if (s.get("health") or {}).get("status") == "ok"}:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError("stack did not come up:\n" + (work / "halo_gateway.log").read_text()[-2000:])
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ.get("HALO_CHROMIUM", "/usr/bin/chromium"),
                                         headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{base}/#/runs")
            page.get_by_test_id("token-input").wait_for()  # locked: the Connection page, not the runs
            seen["locked_page"] = page.locator("h1").inner_text()
            seen["api_without_token"] = page.evaluate("fetch('/api/v1/runs').then(r => r.status)")
            seen["sse_without_token"] = page.evaluate(SSE_PROBE)
            page.screenshot(path=str(work / "signed-out.png"), full_page=True)
            page.get_by_test_id("token-input").fill("hfk_wrong-token-0000000000000000")
            page.get_by_test_id("sign-in").click()
            seen["wrong_token_error"] = page.locator(".error").first.inner_text()
            page.get_by_test_id("token-input").fill(TOKEN)
            page.get_by_test_id("sign-in").click()
            page.get_by_test_id("runs-table").wait_for()  # unlocked: the page asked for in the first place
            seen["after_sign_in"] = page.locator("h1").inner_text()
            seen["cookies"] = {c["name"]: {"httpOnly": c["httpOnly"], "sameSite": c["sameSite"]}
                               for c in page.context.cookies()}
            seen["api_with_session"] = page.evaluate("fetch('/api/v1/runs').then(r => r.status)")
            seen["sse_with_session"] = page.evaluate(SSE_PROBE)
            seen["post_without_csrf"] = page.evaluate(
                "fetch('/api/v1/auth/tokens', {method: 'POST', headers: {'Content-Type': 'application/json'}, "
                "body: JSON.stringify({name: 'x'})}).then(r => r.status)")
            page.goto(f"{base}/#/")
            page.get_by_test_id("device-cpu-0").wait_for(timeout=20_000)  # the live strip, over SSE with the cookie
            seen["strip"] = page.get_by_test_id("device-cpu-0").inner_text()
            page.screenshot(path=str(work / "signed-in.png"), full_page=True)
            page.goto(f"{base}/#/connection")
            page.get_by_test_id("sign-out").click()
            page.get_by_test_id("token-input").wait_for()
            seen["api_after_sign_out"] = page.evaluate("fetch('/api/v1/runs').then(r => r.status)")
            browser.close()
        return seen
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        nats.stop()


#: Opens an EventSource on the telemetry stream: "message" when a frame arrives, "error" when refused.
SSE_PROBE = """new Promise(resolve => {
  const es = new EventSource('/api/v1/telemetry/stream');
  es.onmessage = e => { es.close(); resolve('message:' + JSON.parse(e.data).devices[0].kind); };
  es.onerror = () => { es.close(); resolve('error'); };
  setTimeout(() => { es.close(); resolve('timeout'); }, 15000);
})"""

if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]))))
