"""Look at a running search's Ray dashboard the way a user does: headless Chromium (Debian's
/usr/bin/chromium, driven by Playwright; no browser download), first without the token (only the
login prompt), then logging in through that prompt with the token; screenshots as artifacts."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("RAYDIGITS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        return f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e '.[test]')"
    return None


def skip_unless_required(why: str) -> None:
    """Skip a browser test for `why`, or fail it when RAYDIGITS_REQUIRE_BROWSER=1 (.ci/run sets it
    once Chromium is installed: there a missing browser or Playwright is a failure, never a skip)."""
    import pytest

    if os.environ.get("RAYDIGITS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RAYDIGITS_REQUIRE_BROWSER=1 but {why}", pytrace=False)
    pytest.skip(why)


def read_token() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip()


def _get(url: str, token: str | None) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})


def api_status(url: str, token: str | None) -> int:
    try:
        with urllib.request.urlopen(_get(f"{url}/nodes?view=summary", token), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def actor_log(url: str, token: str, actor_id: str) -> str:
    """The trial's stdout as the dashboard's log view fetches it."""
    req = _get(f"{url}/api/v0/logs/file?actor_id={actor_id}&suffix=out&lines=200", token)
    with urllib.request.urlopen(req, timeout=20) as resp:
        return resp.read().decode(errors="replace")


def actors(url: str, token: str) -> list[dict]:
    with urllib.request.urlopen(_get(f"{url}/api/v0/actors?limit=100&detail=1", token), timeout=20) as resp:
        return json.loads(resp.read())["data"]["result"]["result"]


def check_dashboard(url: str, node_ip: str, job_name: str) -> dict:
    """Everything the test asserts, gathered while the search runs."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    token = read_token()
    out: dict = {"api_without_token": api_status(url, None), "api_with_token": api_status(url, token)}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            # 1. only the URL: the login prompt, and none of the cluster's data
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.goto(f"{url}/#/actors")
            prompt = page.get_by_text("Authentication Token Required")
            prompt.wait_for(timeout=30_000)
            page.wait_for_timeout(2_000)
            out["no_token_prompt"] = prompt.is_visible()
            out["no_token_sees_trials"] = "smoke_" in page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "dashboard_no_token.png"))
            page.context.close()

            # 2. log in through the prompt with the token
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.goto(url)
            page.get_by_role("textbox", name="Authentication Token").fill(token)
            page.get_by_role("button", name=re.compile("submit", re.I)).click()
            page.get_by_text("Authentication Token Required").wait_for(state="hidden", timeout=30_000)
            out["cookie_set"] = any(c["name"] == "ray-authentication-token" for c in page.context.cookies())

            page.goto(f"{url}/#/cluster")
            page.get_by_text(node_ip).first.wait_for(timeout=60_000)
            out["cluster_lists_node"] = True
            page.screenshot(path=str(ARTIFACTS / "dashboard_cluster.png"))

            page.goto(f"{url}/#/actors")
            page.get_by_text(re.compile(r"smoke_\w+_\d{5}")).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1_000)
            body = page.inner_text("body")
            out["actors_view_trials"] = sorted(set(re.findall(r"smoke_\w+_\d{5}", body)))
            out["actors_view_class"] = "RaydigitsTrial" in body
            page.screenshot(path=str(ARTIFACTS / "dashboard_actors.png"))

            page.goto(f"{url}/#/jobs")
            page.get_by_text(job_name).first.wait_for(timeout=60_000)
            out["jobs_view_name"] = True
            page.screenshot(path=str(ARTIFACTS / "dashboard_jobs.png"))
        finally:
            browser.close()
    # the log a trial's "Log" link opens holds its per-epoch lines (finished trials' logs stay)
    deadline, logs = time.time() + 90, {}
    while time.time() < deadline:
        logs = {
            a["repr_name"]: actor_log(url, token, a["actor_id"])
            for a in actors(url, token)
            if (a.get("repr_name") or "").startswith("smoke_") and a.get("pid")
        }
        if any(f"[{name}] epoch 1 val_acc" in log for name, log in logs.items()):
            break
        time.sleep(2)
    out["trial_logs"] = logs
    return out


def check_report(report: Path, screenshot: Path) -> dict:
    """Open a report.html from disk with every network request refused (and counted), wait for its
    plots, screenshot the whole page. Returns what the test asserts."""
    from playwright.sync_api import sync_playwright

    screenshot.parent.mkdir(parents=True, exist_ok=True)
    out: dict = {"network_requests": [], "console_errors": []}
    with sync_playwright() as p:
        # SwiftShader: parallel coordinates draw their lines with WebGL, and there is no GPU here
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
        )
        try:
            page = browser.new_context(viewport={"width": 1300, "height": 900}, offline=True).new_page()

            def refuse(route):
                if not route.request.url.startswith(("file:", "data:")):
                    out["network_requests"].append(route.request.url)
                    return route.abort()
                return route.continue_()

            page.route("**/*", refuse)
            page.on("console", lambda msg: out["console_errors"].append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: out["console_errors"].append(str(exc)))
            page.goto(report.resolve().as_uri())
            page.wait_for_function(
                "[...document.querySelectorAll('.plotly-graph-div')].every(d => d.querySelector('.main-svg'))",
                timeout=60_000,
            )
            page.wait_for_timeout(1_000)
            out["sections"] = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
            out["plots_drawn"] = page.eval_on_selector_all(
                ".plotly-graph-div", "els => els.filter(e => e.querySelector('.main-svg')).map(e => e.id)"
            )
            out["parcoords_lines"] = page.eval_on_selector_all("#plot_parcoords canvas", "els => els.length")
            out["parcoords_axes"] = page.eval_on_selector_all("#plot_parcoords .y-axis", "els => els.length")
            out["curve_traces"] = page.eval_on_selector_all("#plot_curves .scatterlayer .trace", "els => els.length")
            out["images_loaded"] = page.eval_on_selector_all(
                "img", "els => els.map(e => e.complete && e.naturalWidth > 0)"
            )
            out["text"] = page.inner_text("body")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return out
