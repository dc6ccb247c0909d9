"""mxscan report: the HTML page opened in headless Chromium, with every network request logged.

Chromium is driven over the DevTools protocol on a pipe, so the test opens no port.
With ``--remote-debugging-pipe`` the browser reads commands on fd 3 and writes replies
and events on fd 4, each message a JSON object ended by a NUL byte. The Network domain
reports every request the page makes, including file: URLs, which is how the test
proves that the report fetches nothing.

The screenshot stays in the test's tmp dir; set MXSCAN_TEST_ARTIFACTS to a folder to
get a copy there.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from scanner.cli import main
from scanner.ops.report import bar_chart, render_report
from scanner.ops.summary import SweepSummary
from test_ops_lab import EXPECTED_CHANGES, lab_sweeps

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--window-size=1280,900",
]
# Seconds for one DevTools command or page load; Chromium starts in about 1 s here.
CDP_TIMEOUT = 30.0
HOSTILE_DOMAIN = '<img src="x" id="injected">&amp;'


def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run must install Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


def _move_above(fd: int, lowest: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest + 1)
    os.close(fd)
    return moved


class DevTools:
    """A headless Chromium and one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # Move the child's ends above fd 9 first: if one of them were 3 or 4 itself,
        # the redirections below would close it.
        to_browser_read = _move_above(to_browser_read, 9)
        from_browser_write = _move_above(from_browser_write, 9)
        # bash moves the pipe ends to fds 3 and 4, where --remote-debugging-pipe expects them.
        self.log_path = profile.parent / "chromium.log"
        self._log = open(self.log_path, "wb")
        script = f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write} {to_browser_read}<&- {from_browser_write}>&-'
        self.process = subprocess.Popen(
            ["bash", "-c", script, binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_browser_read, from_browser_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.send("Browser.close", session=False)
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._log.close()

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no DevTools message from chromium in time")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the DevTools pipe (exit status {self.process.poll()}); see {self.log_path}")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Send one command and return its result; events that arrive meanwhile go to ``events``."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + CDP_TIMEOUT
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        deadline = time.monotonic() + CDP_TIMEOUT
        for index, seen in enumerate(self.events):
            if seen["method"] == event:
                return self.events.pop(index)
        while True:
            message = self._read_message(deadline)
            if message.get("method") == event:
                return message
            if "method" in message:
                self.events.append(message)

    def open(self, url: str) -> None:
        """Attach to the first page, turn on request and log reporting, and load ``url``."""
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(target for target in targets if target["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False)["sessionId"]
        for domain in ("Network", "Page", "Log", "Runtime"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")
        # One more round trip, so that events sent right after the load are in.
        self.evaluate("1")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        height = self.evaluate("document.documentElement.scrollHeight")
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": min(int(height), 4000), "deviceScaleFactor": 1, "mobile": False})
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def requested_urls(self) -> list[str]:
        return [event["params"]["request"]["url"] for event in self.events if event["method"] == "Network.requestWillBeSent"]

    def blocked_requests(self) -> dict[str, str]:
        """Map request ids of failed requests to Chromium's blocked reason (csp, ...)."""
        return {event["params"]["requestId"]: event["params"].get("blockedReason") for event in self.events if event["method"] == "Network.loadingFailed"}

    def log_messages(self) -> list[str]:
        messages = [event["params"]["entry"]["text"] for event in self.events if event["method"] == "Log.entryAdded"]
        messages += [" ".join(str(arg.get("value")) for arg in event["params"]["args"]) for event in self.events if event["method"] == "Runtime.consoleAPICalled"]
        return messages


def run_main(argv: list[str]) -> int:
    """Run ``mxscan`` and then restore Python's SIGPIPE handling, which ``main`` sets to the default action.

    Under the default action a write to a Chromium that has exited would end pytest
    silently instead of raising BrokenPipeError.
    """
    try:
        return main(argv)
    finally:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


@pytest.fixture
def browser(tmp_path):
    binary = chromium_binary()
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    devtools = DevTools(binary, profile)
    try:
        yield devtools
    finally:
        devtools.close()


@pytest.fixture
def report_page(tmp_path_factory, tmp_path, capsys):
    """Write the report of the new lab sweep against the old one, with one hostile domain added."""
    old_path, new_path, _old, _new = lab_sweeps(tmp_path_factory)
    hostile = json.loads(new_path.read_text().splitlines()[0])
    hostile.update(domain=HOSTILE_DOMAIN, query_name=None, status="invalid_input", reason="invalid_label", exchanges=[], mx_source=None)
    results = tmp_path / "new-with-hostile.jsonl"
    results.write_text(new_path.read_text() + json.dumps(hostile) + "\n")

    output = tmp_path / "report.html"
    status = run_main(["report", str(results), "--previous", str(old_path), "-o", str(output)])
    assert status == 0, capsys.readouterr().err
    return output


def test_report_renders_offline(browser, report_page, tmp_path):
    url = report_page.as_uri()
    browser.open(url)

    # The page itself is the only request: no image, font, style sheet or script.
    assert browser.requested_urls() == [url]
    assert browser.log_messages() == []

    headings = browser.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
    for title in ("Overview", "Status", "Reasons", "Top 10 MX providers", "TLS on the first mail host that answered", "Certificate expiry"):
        assert title in headings
    assert any(heading.startswith("Changes since ") for heading in headings)
    assert browser.evaluate("document.querySelectorAll('svg.chart rect').length") >= 20

    change_rows = browser.evaluate("[...document.querySelectorAll('#changes tbody tr')].map(row => row.cells[1].textContent)")
    assert len(change_rows) == len(EXPECTED_CHANGES) + 1  # and the hostile domain, added
    assert sorted(set(change_rows)) == sorted({change for _domain, change in EXPECTED_CHANGES})

    # The style element ran under the policy: its hash matched.
    assert browser.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor") == "rgb(34, 48, 63)"
    policy = browser.evaluate("document.querySelector('meta[http-equiv=\"Content-Security-Policy\"]').content")
    assert policy.startswith("default-src 'none';")

    # The hostile domain is shown as text, not parsed as an element.
    assert browser.evaluate("document.getElementById('injected')") is None
    assert browser.evaluate("document.images.length") == 0
    assert HOSTILE_DOMAIN in browser.evaluate("document.querySelector('#changes').textContent")

    screenshot = tmp_path / "report.png"
    browser.screenshot(screenshot)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000
    artifacts = os.environ.get("MXSCAN_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / "report.png")


def test_report_policy_blocks_fetches(browser, report_page, tmp_path):
    # The report's own policy, on a page that tries to load an image from loopback.
    page = report_page.read_text().replace("<main>", '<main><img id="probe" src="http://127.0.0.1:9/pixel.png">', 1)
    tampered = tmp_path / "tampered.html"
    tampered.write_text(page)
    browser.open(tampered.as_uri())

    fetches = [event for event in browser.events if event["method"] == "Network.requestWillBeSent" and "127.0.0.1" in event["params"]["request"]["url"]]
    blocked = browser.blocked_requests()
    for event in fetches:
        assert blocked.get(event["params"]["requestId"]) == "csp"
    assert any("Content Security Policy" in message for message in browser.log_messages())


def test_request_log_sees_subresources(browser, tmp_path):
    # Without a policy, the Network events report a subresource request (here a
    # missing local file), so an empty list in the report test means something.
    page = tmp_path / "plain.html"
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png"></body></html>')
    browser.open(page.as_uri())
    assert (tmp_path / "missing.png").as_uri() in browser.requested_urls()


def test_report_has_no_urls(report_page):
    page = report_page.read_text()
    # Attribute markers end in a quote: the escaped hostile domain contains src=&quot;.
    for marker in ("<script", 'src="', "src='", 'href="', "href='", "url(", "@import", "http://", "https://"):
        assert marker not in page, marker


def test_report_without_previous(tmp_path_factory, tmp_path, capsys):
    _old_path, new_path, _old, _new = lab_sweeps(tmp_path_factory)
    output = tmp_path / "report.html"
    assert run_main(["report", str(new_path), "-o", str(output)]) == 0
    page = output.read_text()
    assert "Changes since" not in page
    assert "cert-expiring.test" in page


def test_report_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"schema": "mxscan/1", "domain": "a.test", "status": "reachable"}\n"text"\n')
    output = tmp_path / "report.html"
    assert run_main(["report", str(bad), "-o", str(output)]) == 2
    assert f"{bad}:2: expected a JSON object, got str" in capsys.readouterr().err
    assert not output.exists()


def test_report_empty_sweep(tmp_path):
    page = render_report(SweepSummary("empty.jsonl"))
    assert "Nothing to show." in page
    assert "<p>0 domains</p>" in page


def test_bar_chart_scales_to_largest():
    chart = bar_chart([("a", 10, "good"), ("b", 5, "bad"), ("c", 0, "neutral")], label_width=100, width=270)
    assert 'width="100" height="15"' in chart  # 270 - 100 - 70 pixels for the largest bar
    assert 'width="50" height="15"' in chart
    assert 'width="0" height="15"' in chart
