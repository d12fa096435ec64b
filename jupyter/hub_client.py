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

    def kernel(self):
        r = self.api("POST", f"/user/{self.user}/api/kernels", json={"name": "python3"})
        r.raise_for_status()
        return r.json()["id"]

    def run(self, code, kernel=None, timeout=600):
        """Run ``code`` in a kernel (new unless given); its printed output. RuntimeError
        with the traceback if it raises."""
        kernel = kernel or self.kernel()
        return asyncio.run(self._execute(kernel, code, timeout))

    async def _execute(self, kernel, code, timeout):
        ws_url = self.url.replace("http", "ws", 1) + \
            f"/user/{self.user}/api/kernels/{kernel}/channels"
        conn = await websocket_connect(_request(ws_url, self.token))
        msg_id = uuid.uuid4().hex
        conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": self.user, "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False}}))
        out, error = [], None
        deadline = time.monotonic() + timeout
        try:
            while True:
                raw = await asyncio.wait_for(conn.read_message(), deadline - time.monotonic())
                if raw is None:
                    raise RuntimeError(f"{self.user}: the kernel's websocket closed")
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind in ("execute_result", "display_data"):
                    out.append(content["data"].get("text/plain", "") + "\n")
                elif kind == "error":
                    error = "\n".join(content["traceback"])
                elif kind == "status" and content["execution_state"] == "idle":
                    break
        finally:
            conn.close()
        if error:
            raise RuntimeError(f"{self.user}: the code raised:\n{error}")
        return "".join(out)


def _request(url, token):
    from tornado.httpclient import HTTPRequest
    return HTTPRequest(url, headers={"Authorization": f"token {token}"}, validate_cert=False)
