"""Start the class server: check the teacher's options, then run JupyterHub with
jupyter/hub_config.py (``make hub HUB_ARGS="..."`` runs this as root).

    hub_start.py [--ip 127.0.0.1] [--port 8000] [--ssl-cert FILE --ssl-key FILE]
                 [--cores-per-student 2] [--mem 3G] [--idle 3600] [--state .hub]

Every check runs before anything starts, and each failure is one line saying what was
wrong and what would be right: not root, the proxy not installed, the port in use, a
certificate or key missing or unreadable, more cores per student than the machine has.
A project folder students cannot enter is a warning here (the login page still works) and
the error of every spawn (jupyter/hub_spawner.py: ``unreachable``).
The options reach hub_config.py as MGPU_HUB_* environment variables; the hub's own API
and the proxy's API get free ports on 127.0.0.1, so two hubs (a test's and a class's)
do not collide.
"""
import argparse
import os
import signal
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from hub_spawner import blocked_folders, class_members, core_sets, unreachable  # noqa: E402

__all__ = ["parse", "check", "environment", "main", "blocked_folders"]
PROXY = os.path.join(ROOT, ".venv", "hub-proxy", "node_modules", ".bin",
                     "configurable-http-proxy")


def parse(argv):
    p = argparse.ArgumentParser(description="JupyterHub for a class on this machine")
    p.add_argument("--ip", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface); default 127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ssl-cert", help="certificate file (PEM): serve HTTPS")
    p.add_argument("--ssl-key", help="its private key file (PEM)")
    p.add_argument("--cores-per-student", type=int, default=2)
    p.add_argument("--mem", default="3G", help="memory per student, e.g. 3G; 0: none")
    p.add_argument("--idle", type=int, default=3600,
                   help="stop a server idle this many seconds")
    p.add_argument("--group", default="mgpu-students", help="the class's system group")
    p.add_argument("--state", default=os.path.join(ROOT, ".hub"),
                   help="folder for the hub's database, cookie secret and pid files")
    return p.parse_args(argv)


def _port_in_use(ip, port):
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return True
    return False


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_file(what, path):
    if not os.path.isfile(path):
        raise SystemExit(f"hub: the {what} {path!r} does not exist: give the path of a PEM "
                         f"file (see the teacher's guide, 'HTTPS')")
    if not os.access(path, os.R_OK):
        raise SystemExit(f"hub: the {what} {path!r} is not readable by this user")


def check(args):
    """Raise SystemExit with one clear line for the first thing that would fail."""
    if os.geteuid() != 0:
        raise SystemExit("hub: run it as root (sudo make hub): the hub checks students' "
                         "passwords with PAM and starts each server as its student")
    if not 1 <= args.port <= 65535:
        raise SystemExit(f"hub: port {args.port} is not a TCP port (1 to 65535)")
    if _port_in_use(args.ip, args.port):
        raise SystemExit(f"hub: port {args.port} on {args.ip} is in use or not available "
                         f"(ss -ltnp names the program using it): pick another with "
                         f"--port, e.g. make hub HUB_ARGS=\"--port {args.port + 1}\"")
    if bool(args.ssl_cert) != bool(args.ssl_key):
        raise SystemExit("hub: HTTPS needs both --ssl-cert and --ssl-key")
    if args.ssl_cert:
        _check_file("certificate", args.ssl_cert)
        _check_file("key", args.ssl_key)
    try:
        core_sets(os.sched_getaffinity(0), args.cores_per_student)
    except ValueError as e:
        raise SystemExit(f"hub: {e}") from None
    if not os.access(PROXY, os.X_OK):  # last: what the teacher typed is checked first
        raise SystemExit(f"hub: configurable-http-proxy is missing at {PROXY}: run make hub "
                         f"(it installs it with npm)")


def environment(args):
    """hub_config.py's inputs, as environment variables."""
    return {"MGPU_HUB_IP": args.ip, "MGPU_HUB_PORT": str(args.port),
            "MGPU_HUB_SSL_CERT": os.path.abspath(args.ssl_cert) if args.ssl_cert else "",
            "MGPU_HUB_SSL_KEY": os.path.abspath(args.ssl_key) if args.ssl_key else "",
            "MGPU_HUB_CORES": str(args.cores_per_student),
            "MGPU_HUB_MEM": "" if args.mem in ("0", "") else args.mem,
            "MGPU_HUB_IDLE": str(args.idle), "MGPU_HUB_GROUP": args.group,
            "MGPU_HUB_STATE": os.path.abspath(args.state),
            "MGPU_HUB_API_PORT": str(_free_port()),
            "MGPU_HUB_PROXY_API_PORT": str(_free_port())}


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    check(args)
    try:
        n = len(class_members(args.group))
    except ValueError:
        n = 0
    if n == 0:
        print(f"hub: the class group {args.group!r} has no students yet: "
              f"make students CLASS=class.txt adds them", file=sys.stderr)
    problem = unreachable(os.path.join(ROOT, ".venv", "bin", "python"))
    if problem:  # the login page works; each spawn would fail with the same words
        print(f"hub: WARNING: {problem}", file=sys.stderr)
    os.makedirs(args.state, mode=0o700, exist_ok=True)
    env = {**os.environ, **environment(args)}
    hub = os.path.join(ROOT, ".venv", "bin", "jupyterhub")
    scheme = "https" if args.ssl_cert else "http"
    # and the hub's children (the culler) would inherit that and take 10 s more to stop
    print(f"hub: {n} students; log in at {scheme}://{args.ip}:{args.port}/", flush=True)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job ignores it,
    os.execve(hub, [hub, "-f", os.path.join(HERE, "hub_config.py")], env)


if __name__ == "__main__":
    main()
