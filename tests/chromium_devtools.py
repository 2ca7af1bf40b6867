"""A headless Chromium driven over the DevTools protocol, with the Python standard library only.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands from its file descriptor 3 and
writes replies and events to descriptor 4, each a JSON object followed by a NUL byte: no WebSocket, no
port. ``Browser`` opens one page, records every uncaught exception, console error and failed load in
``errors``, evaluates JavaScript (awaiting promises) and takes screenshots.
"""

import base64
import json
import os
import queue
import subprocess
import tempfile
import threading
import time

# A console error, an uncaught exception or a failed request, as one line.
ERROR_EVENTS = ("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded", "Network.loadingFailed")


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, binary: str, width: int = 1400, height: int = 900, timeout: float = 60):
        self.timeout = timeout
        self.errors: list[str] = []
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def descriptors_3_and_4():  # in the child, before exec: the pipe ends as fds 3 and 4
            read, write = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self._process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
             # the .zip report's page reads its figures and tables from files beside it
             "--allow-file-access-from-files", f"--user-data-dir={self._profile.name}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=descriptors_3_and_4, close_fds=False)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._stderr: list[bytes] = []
        self._replies: dict[int, queue.Queue] = {}
        self._events: queue.Queue = queue.Queue()
        self._next_id = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=lambda: self._stderr.extend(self._process.stderr), daemon=True).start()
        try:
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable", session=True)
            self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    # the protocol

    def _read(self):
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 20):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    self._replies[message["id"]].put(message)
                else:
                    self._record(message)
                    self._events.put(message)
        self._events.put(None)  # the browser has gone

    def send(self, method: str, session: bool = False, **params):
        with self._lock:
            self._next_id += 1
            number = self._next_id
            self._replies[number] = queue.Queue()
        message = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = self._replies[number].get(timeout=self.timeout)
        except queue.Empty:
            raise BrowserError(f"no reply to {method} in {self.timeout} s; browser stderr:\n{self.stderr()}") from None
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply["result"]

    def _record(self, event):
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught exception: {text} ({details.get('url', '')}:{details.get('lineNumber')})")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append("console.error: " + " ".join(str(arg.get("value", arg.get("description", "")))
                                                            for arg in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"{entry['source']} error: {entry['text']} {entry.get('url', '')}".rstrip())
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.errors.append(f"failed to load ({params.get('type')}): {params['errorText']}")

    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")[-3000:]

    # the page

    def open(self, url: str):
        """Load ``url`` and wait for its load event."""
        self.send("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                event = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if event is None:
                raise BrowserError(f"the browser exited while loading {url}:\n{self.stderr()}")
            if event.get("method") == "Page.loadEventFired":
                return
        raise BrowserError(f"{url} did not load in {self.timeout} s")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a promise's once it settles)."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                           returnByValue=True, timeout=self.timeout * 1000)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, condition: str, what: str):
        """Poll a JavaScript expression until it is true."""
        deadline = time.monotonic() + self.timeout
        while not self.evaluate(condition):
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {what} ({condition})")
            time.sleep(0.1)

    def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        return base64.b64decode(self.send("Page.captureScreenshot", session=True, format="png")["data"])

    def close(self):
        try:
            os.close(self._to_browser)  # the browser exits when its command pipe closes
        except OSError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=10)  # it reads to the end of what the browser wrote
        os.close(self._from_browser)
        self._profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
