"""A student, scripted: log in to the class server, start a server, run code in a kernel.

The tests (tests/test_hub.py) and the teacher's capacity measurement use it; a teacher
can use it to try a new hub:

    s = HubStudent("http://127.0.0.1:8000", "ann", "her password")
    s.login(); s.start()
    print(s.run("import os; print(os.getuid())"))
    s.stop()

Everything goes through the hub's public address: the login form (so the authenticator
decides), then the hub's REST API with a token the logged-in student asks for, then the
student's own Jupyter server (kernels over its REST API and websocket).
"""
import asyncio
import json
import time
import uuid

import requests
from tornado.websocket import websocket_connect

__all__ = ["HubStudent", "LoginRefused"]


class LoginRefused(RuntimeError):
    pass


class HubStudent:
    def __init__(self, url, user, password, timeout=120):
        self.url, self.user, self.password, self.timeout = url.rstrip("/"), user, password, timeout
        self.http = requests.Session()
        self.token = None

    def login(self):
        """Log in through the login form; then ask the hub for an API token."""
        self.http.get(f"{self.url}/hub/login", timeout=30).raise_for_status()
        xsrf = self.http.cookies.get("_xsrf")
        r = self.http.post(f"{self.url}/hub/login", allow_redirects=False, timeout=60,
                           data={"username": self.user, "password": self.password,
                                 "_xsrf": xsrf})
        if r.status_code != 302:
            raise LoginRefused(f"{self.user}: the hub refused the login ({r.status_code})")
        r = self.http.post(f"{self.url}/hub/api/users/{self.user}/tokens", timeout=30,
                           headers={"X-XSRFToken": self.http.cookies.get("_xsrf")},
                           json={"note": "hub_client", "expires_in": 3600})
        r.raise_for_status()
        self.token = r.json()["token"]
        return self

    def api(self, method, path, **kw):
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kw)

    def start(self):
        """Start the student's server; seconds until it answers."""
        t0 = time.perf_counter()
        r = self.api("POST", f"/hub/api/users/{self.user}/server")
        if r.status_code not in (201, 202, 400):  # 400: already running
            raise RuntimeError(f"{self.user}: spawn failed {r.status_code}: {r.text}")
        while time.perf_counter() - t0 < self.timeout:
            model = self.api("GET", f"/hub/api/users/{self.user}").json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return time.perf_counter() - t0
            time.sleep(0.5)
        raise TimeoutError(f"{self.user}: server not ready after {self.timeout} s")

    def server(self):
        """The hub's model of the student's server (pid under state, when admin can see)."""
        return self.api("GET", f"/hub/api/users/{self.user}").json().get("servers", {}).get("")

    def stop(self):
        r = self.api("DELETE", f"/hub/api/users/{self.user}/server")
        if r.status_code not in (202, 204):
            raise RuntimeError(f"{self.user}: stop failed {r.status_code}: {r.text}")

    def kernel(self, timeout=120):
        """Start a kernel in the student's server; its id, once it answers a kernel_info
        request (as nbclient's ``wait_for_ready``: code sent to a kernel still starting
        can be lost)."""
        r = self.api("POST", f"/user/{self.user}/api/kernels", json={"name": "python3"})
        r.raise_for_status()
        kernel = r.json()["id"]
        asyncio.run(self._request_reply(kernel, "kernel_info_request", {}, timeout))
        return kernel

    def kernel_state(self, kernel):
        """The server's view of ``kernel``: its execution_state (``idle``, ``busy``,
        ``starting``, ``dead``...), or ``gone`` when the server no longer lists it."""
        r = self.api("GET", f"/user/{self.user}/api/kernels/{kernel}")
        if r.status_code == 404:
            return "gone"
        return r.json().get("execution_state", "?") if r.ok else f"unknown (HTTP {r.status_code})"

    def run(self, code, kernel=None, timeout=600):
        """Run ``code`` in a kernel (new unless given); its printed output. RuntimeError
        with the traceback if it raises, or if the kernel dies; TimeoutError (saying what
        was seen) after ``timeout`` seconds."""
        kernel = kernel or self.kernel()
        return asyncio.run(self._execute(kernel, code, timeout))

    async def _connect(self, kernel, session):
        ws_url = self.url.replace("http", "ws", 1) + \
            f"/user/{self.user}/api/kernels/{kernel}/channels?session_id={session}"
        return await websocket_connect(_request(ws_url, self.token))

    async def _request_reply(self, kernel, msg_type, content, timeout, channel="shell"):
        """Send one request and return its reply's content; resend while the kernel has
        not answered (a kernel still starting drops what it is sent)."""
        session, deadline = uuid.uuid4().hex, time.monotonic() + timeout
        conn = await self._connect(kernel, session)
        try:
            while time.monotonic() < deadline:
                msg_id = _send(conn, session, self.user, msg_type, content, channel)
                try:
                    while True:
                        msg = await _next(conn, min(5, deadline - time.monotonic()))
                        if msg["parent_header"].get("msg_id") == msg_id and \
                                msg["msg_type"] == msg_type.replace("_request", "_reply"):
                            return msg["content"]
                except asyncio.TimeoutError:
                    continue
        finally:
            conn.close()
        raise TimeoutError(f"{self.user}: kernel {kernel} did not answer {msg_type} in "
                           f"{timeout} s (server says: {self.kernel_state(kernel)})")

    async def _execute(self, kernel, code, timeout, quiet=20):
        """Send ``code``; collect its output until both its ``execute_reply`` (shell) and
        its ``idle`` status (iopub) arrived. After ``quiet`` seconds without a message,
        ask the server how the kernel is: dead is an error at once; idle with nothing
        seen means the request was lost, and it is sent once more; a reply without its
        idle status is taken as the end (as nbclient does after its iopub timeout)."""
        session, deadline = uuid.uuid4().hex, time.monotonic() + timeout
        conn = await self._connect(kernel, session)
        run, resent = _Run(self.user, code), False
        msg_id = _send(conn, session, self.user, "execute_request", run.content())
        try:
            while not run.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(run.story(timeout, self.kernel_state(kernel)))
                try:
                    run.take(await _next(conn, min(quiet, left)), msg_id)
                    continue
                except asyncio.TimeoutError:
                    state = self.kernel_state(kernel)
                if state in ("dead", "gone"):
                    raise RuntimeError(run.story(None, state))
                if run.reply is not None:
                    run.seen.append("(no idle status)")
                    break
                if state == "idle" and not run.seen and not resent:
                    msg_id, resent = _send(conn, session, self.user, "execute_request",
                                           run.content()), True
        finally:
            conn.close()
        return run.result()


class _Run:
    """What one execute_request has produced so far."""

    def __init__(self, user, code):
        self.user, self.code = user, code
        self.out, self.error, self.seen, self.reply, self.idle = [], None, [], None, False

    def content(self):
        return {"code": self.code, "silent": False, "store_history": False,
                "user_expressions": {}, "allow_stdin": False}

    def take(self, msg, msg_id):
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status" and content["execution_state"] in ("restarting", "dead"):
            # the server's own status, for no request: the kernel process is gone
            raise RuntimeError(self.story(None, content["execution_state"]))
        if msg["parent_header"].get("msg_id") != msg_id:
            return
        self.seen.append(kind if kind != "status" else content["execution_state"])
        if kind == "stream":
            self.out.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            self.out.append(content["data"].get("text/plain", "") + "\n")
        elif kind == "error":
            self.error = "\n".join(content["traceback"])
        elif kind == "execute_reply":
            self.reply = content
        elif kind == "status" and content["execution_state"] == "idle":
            self.idle = True

    def done(self):
        return self.reply is not None and self.idle

    def result(self):
        if self.error or self.reply.get("status") != "ok":
            why = self.error or "\n".join(self.reply.get("traceback", [])) or self.reply
            raise RuntimeError(f"{self.user}: the code raised:\n{why}")
        return "".join(self.out)

    def story(self, timeout, state):
        """Why the run ended early, and what it had seen (for the error's reader)."""
        why = (f"no answer in {timeout} s" if timeout else "the kernel died")
        first = self.code.strip().splitlines()[0] if self.code.strip() else ""
        return (f"{self.user}: {why} running {first!r}...; the server says the kernel is "
                f"{state}; messages seen for this request: {self.seen or 'none'}; "
                f"output so far: {''.join(self.out)[-500:]!r}")


def _send(conn, session, user, msg_type, content, channel="shell"):
    """Write one Jupyter message to the kernel's websocket; its msg_id."""
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": user, "session": session,
                   "msg_type": msg_type, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": channel, "buffers": [],
        "content": content}))
    return msg_id


async def _next(conn, timeout):
    """The next message from the websocket (asyncio.TimeoutError after ``timeout`` s)."""
    raw = await asyncio.wait_for(conn.read_message(), timeout)
    if raw is None:
        raise RuntimeError("the kernel's websocket closed")
    return json.loads(raw)


def _request(url, token):
    from tornado.httpclient import HTTPRequest
    return HTTPRequest(url, headers={"Authorization": f"token {token}"}, validate_cert=False)
