"""The class server (``make hub``): real accounts, real logins, real servers (root only).

Creates two throw-away students (a class group of its own), starts the hub on a free port
of 127.0.0.1, logs both in through the login form (PAM), starts both servers through the
hub's REST API and runs chapter 3's first cells in each. Then checks who runs what, whose
home is whose, which cores each got, that a request without a login is refused, and that
stopping the hub leaves nothing behind. The students are removed at the end, also when a
check fails. Bad input (class list, port, certificate) must fail with one clear line and
create nothing.
"""
import grp
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import uuid

import psutil
import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "jupyter"))
import hub_start  # noqa: E402
import hub_students  # noqa: E402
from hub_client import HubStudent, LoginRefused  # noqa: E402
import hub_spawner  # noqa: E402
from hub_spawner import CGROUP, assign_cores, class_members  # noqa: E402

pytestmark = [pytest.mark.hub, pytest.mark.timeout(900)]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the hub tests create system "
                               "accounts and start servers as them: run them as root")
PY = os.path.join(ROOT, ".venv", "bin", "python")
START = os.path.join(ROOT, "jupyter", "hub_start.py")
STUDENTS = os.path.join(ROOT, "jupyter", "hub_students.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chapter3_first_cells():
    """The code of chapter 3's first two code cells (model, flat parameter vector)."""
    import jupytext
    nb = jupytext.read(os.path.join(ROOT, "book", "03_four_steps.md"))
    return [c.source for c in nb.cells if c.cell_type == "code"][:2]


@pytest.fixture(scope="module")
def reachable():
    """Students must reach the project's Python; where a folder on the way is closed to
    other users (e.g. /root holding pyenv), open it for passing through (o+x) while the
    test runs, and close it again after."""
    blocked = hub_start.blocked_folders([PY, os.path.join(ROOT, "mgpu_lab", "__init__.py")])
    modes = {f: os.stat(f).st_mode & 0o7777 for f in blocked}
    for f in blocked:
        os.chmod(f, modes[f] | 0o001)
    yield
    for f, mode in modes.items():
        os.chmod(f, mode)


@pytest.fixture(scope="module")
def students(tmp_path_factory, reachable):
    """Two students in a class group of their own; removed afterwards, whatever happens."""
    tag = uuid.uuid4().hex[:6]
    names = [f"mgpu-t{tag}-a", f"mgpu-t{tag}-b"]
    group = f"mgpu-t{tag}"
    folder = tmp_path_factory.mktemp("class")
    class_list = folder / "class.txt"
    class_list.write_text("\n".join(names) + "\n")
    try:
        made = hub_students.add(str(class_list), group, str(folder / "pw"))
        yield {"names": names, "group": group, "passwords": made, "list": class_list}
    finally:
        for n in names:
            subprocess.run(["userdel", "--remove", "--force", n], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)
        left = [n for n in names if _known(pwd.getpwnam, n)] + [group] * _known(grp.getgrnam, group)
        assert left == [], f"the test's accounts outlived it: {left}"  # a teardown error


def _known(lookup, name):
    try:
        lookup(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def hub(students, tmp_path_factory):
    """A hub on a free port, one core per student; stopped (SIGTERM) by the test below
    or, if that fails first, here."""
    if not os.path.exists(hub_start.PROXY):
        pytest.skip(f"configurable-http-proxy is not installed ({hub_start.PROXY}): "
                    f"make test-all and make hub install it with npm")
    port = _free_port()
    state = tmp_path_factory.mktemp("hubstate")
    log = open(state / "hub.log", "w")
    proc = subprocess.Popen([PY, START, "--port", str(port), "--group", students["group"],
                             "--cores-per-student", "1", "--state", str(state)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/hub/login", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert proc.poll() is None, (state / "hub.log").read_text()
        time.sleep(1)
    else:
        pytest.fail("the hub did not answer in 120 s:\n" + (state / "hub.log").read_text())
    yield {"url": url, "proc": proc, "port": port, "log": state / "hub.log"}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _uid(name):
    import pwd
    return pwd.getpwnam(name).pw_uid


def _what_the_students_run(students, hub):
    """For a failure's reader: the students' processes (state, memory, CPU), their memory
    cgroups' counters where there are some, and the end of the hub's log."""
    uids = {_uid(n): n for n in students["names"]}
    lines = ["the students' processes:"]
    for p in psutil.process_iter(["pid", "uids", "status", "memory_info", "cpu_times",
                                  "cmdline"]):
        if p.info["uids"] and p.info["uids"].real in uids:
            i = p.info
            lines.append(f"  {uids[i['uids'].real]} pid {i['pid']} {i['status']} "
                         f"rss {i['memory_info'].rss >> 20} MiB cpu "
                         f"{sum(i['cpu_times'][:2]):.1f} s: "
                         f"{' '.join(i['cmdline'] or [])[:120]}")
    for name in students["names"]:
        v1 = f"{CGROUP}/memory{hub_spawner._own_cgroup_v1() or ''}".rstrip("/")
        for base in (f"{CGROUP}/mgpu-hub/{name}", f"{v1}/mgpu-hub/{name}"):
            for f in ("memory.max_usage_in_bytes", "memory.failcnt", "memory.peak",
                      "memory.events", "memory.oom_control"):
                if os.path.exists(f"{base}/{f}"):
                    text = open(f"{base}/{f}").read().split()
                    lines.append(f"  {name} {f}: {' '.join(text)}")
    log = hub["log"].read_text().splitlines() if hub["log"].exists() else []
    return "\n".join(lines + ["the hub's log, last 40 lines:"] + log[-40:])


@root_only
def test_two_students_each_on_their_own_server_cores_and_home(students, hub):
    a, b = students["names"]
    logged = {n: HubStudent(hub["url"], n, students["passwords"][n]).login() for n in (a, b)}
    for s in logged.values():
        s.start()
    cells = _chapter3_first_cells()
    seen = {}
    for name, s in logged.items():
        other = b if name == a else a
        try:
            kernel = s.kernel()
            out = "".join(s.run(cell, kernel) for cell in cells)
        except (RuntimeError, TimeoutError) as e:
            pytest.fail(f"{e}\n\n{_what_the_students_run(students, hub)}")
        assert "total P" in out and "5,794" in out and "round trip exact: True" in out, out
        probe = s.run(
            "import json, os\nfrom mgpu_lab.engines.pinning import cores\n"
            f"try:\n    os.listdir('/home/{other}'); other = 'readable'\n"
            "except PermissionError:\n    other = 'refused'\n"
            "print(json.dumps({'uid': os.getuid(), 'cores': cores(), 'other': other,"
            " 'shared': os.environ['MGPU_CORES_SHARED'], 'home': os.getcwd(),"
            " 'memory': os.environ['MGPU_MEMORY_LIMIT'],"
            " 'said': __import__('mgpu_lab.engines.pinning').engines.pinning.cores_shared()}))",
            kernel)
        seen[name] = json.loads(probe.strip().splitlines()[-1])
    members = class_members(students["group"])
    hub_cores = sorted(os.sched_getaffinity(0))
    for name, got in seen.items():
        want, shared = assign_cores(name, members, hub_cores, 1)
        assert got["uid"] == _uid(name) and got["home"] == f"/home/{name}"
        assert got["other"] == "refused"
        assert got["cores"] == want and got["shared"] == ("1" if shared else "0")
        assert got["said"] is shared
        how, limit = got["memory"].split(":")  # the default --mem 3G, however enforced
        assert how in ("cgroup", "rlimit-as-per-process") and int(limit) == 3 * 2**30
    if len(hub_cores) >= 2:  # two students, one core each: different cores
        assert seen[a]["cores"] != seen[b]["cores"]
    # the server processes themselves run as their students, on their cores
    servers = [p for p in psutil.process_iter(["uids", "cmdline"])
               if p.info["uids"] and p.info["uids"].real in (_uid(a), _uid(b))
               and any("jupyterhub-singleuser" in c for c in p.info["cmdline"] or [])]
    assert sorted(p.info["uids"].effective for p in servers) == sorted([_uid(a), _uid(b)])
    for p in servers:
        name = a if p.info["uids"].real == _uid(a) else b
        assert p.cpu_affinity() == seen[name]["cores"]


@root_only
def test_no_login_no_access(students, hub):
    a = students["names"][0]
    assert requests.get(f"{hub['url']}/hub/api/users", timeout=10).status_code == 403
    r = requests.get(f"{hub['url']}/user/{a}/api/kernels", timeout=10, allow_redirects=False)
    assert r.status_code in (302, 403) and "/hub/login" in r.headers.get("Location", "/hub/login")
    with pytest.raises(LoginRefused):
        HubStudent(hub["url"], a, "not-the-password").login()


@root_only
def test_stopping_the_hub_leaves_nothing_behind(students, hub):
    uids = {_uid(n) for n in students["names"]}
    hub_proc = psutil.Process(hub["proc"].pid)
    family = [hub_proc, *hub_proc.children(recursive=True)]
    hub["proc"].send_signal(signal.SIGTERM)
    hub["proc"].wait(90)
    psutil.wait_procs(family, timeout=30)
    left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []
    theirs = [p.info for p in psutil.process_iter(["pid", "uids", "cmdline"])
              if p.info["uids"] and p.info["uids"].real in uids]
    assert theirs == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{hub['url']}/hub/login", timeout=5)


def test_core_sets_are_dealt_round_robin_and_sharing_is_said():
    members = ["ann", "bob", "cy"]
    assert [assign_cores(m, members, [0, 1], 1) for m in members] == [
        ([0], True), ([1], False), ([0], True)]
    assert [assign_cores(m, members[:2], range(8), 2) for m in members[:2]] == [
        ([0, 1], False), ([2, 3], False)]
    with pytest.raises(ValueError, match="only 2 cores"):
        assign_cores("ann", members, [0, 1], 3)
    with pytest.raises(ValueError, match="not in the class"):
        assign_cores("eve", members, [0, 1], 1)


def test_a_chapter_can_tell_shared_cores(monkeypatch):
    from mgpu_lab.engines.pinning import cores_shared
    monkeypatch.setenv("MGPU_CORES_SHARED", "1")
    assert cores_shared() is True
    monkeypatch.setenv("MGPU_CORES_SHARED", "0")
    assert cores_shared() is False
    monkeypatch.delenv("MGPU_CORES_SHARED")
    assert cores_shared() is False


# Bad input: one clear line, nothing created.

def _run(*args):
    return subprocess.run([PY, *args], capture_output=True, text=True, timeout=120)


@root_only
@pytest.mark.parametrize("lines, says", [
    (["mgpu-zz-ok", "mgpu-zz-ok"], "listed twice (first on line 1)"),
    (["mgpu-zz-ok", "Bad Name"], "not a valid user name"),
    (["root"], "already accounts on this machine"),
])
def test_a_bad_class_list_creates_nobody(tmp_path, lines, says):
    class_list = tmp_path / "class.txt"
    class_list.write_text("\n".join(lines) + "\n")
    r = _run(STUDENTS, "add", str(class_list), "--group", "mgpu-zz-none")
    assert r.returncode != 0 and says in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("students: ")
    with pytest.raises(KeyError):
        import pwd
        pwd.getpwnam("mgpu-zz-ok")
    with pytest.raises(KeyError):
        import grp
        grp.getgrnam("mgpu-zz-none")
    assert not (tmp_path / "class.txt.passwords").exists()


@root_only
def test_a_port_in_use_is_refused(tmp_path, reachable):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _run(START, "--port", str(port), "--state", str(tmp_path / "s"))
    assert r.returncode != 0 and f"port {port} on 127.0.0.1 is in use" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "s").exists()


@root_only
def test_a_missing_certificate_is_refused(tmp_path, reachable):
    key = tmp_path / "key.pem"
    key.write_text("not used")
    r = _run(START, "--port", str(_free_port()), "--ssl-cert", str(tmp_path / "nope.pem"),
             "--ssl-key", str(key), "--state", str(tmp_path / "s"))
    assert r.returncode != 0 and "nope.pem' does not exist" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "s").exists()
    r = _run(START, "--port", str(_free_port()), "--ssl-key", str(key))
    assert r.returncode != 0 and "needs both --ssl-cert and --ssl-key" in r.stderr
