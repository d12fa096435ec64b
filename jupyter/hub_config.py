# JupyterHub's configuration for a class on one machine (`make hub`, jupyter/hub_start.py).
#
# One system account and one JupyterLab per student, each started as that student by
# ClassSpawner (jupyter/hub_spawner.py: its own cores, a memory limit). Students log in
# with their system password (PAM); only members of the class group may. The proxy is
# configurable-http-proxy from npm in .venv/hub-proxy; an idle culler stops servers
# nobody has used for MGPU_HUB_IDLE seconds. hub_start.py checks the teacher's options
# and passes them here through the environment (MGPU_HUB_*); the defaults below are
# what `make hub` gives without options.
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
root = os.path.dirname(here)
env = os.environ.get
state = env("MGPU_HUB_STATE", os.path.join(root, ".hub"))  # database, cookie secret, pids
venv_bin = os.path.join(root, ".venv", "bin")

c = get_config()  # noqa: F821 (JupyterHub's loader defines it)

# Where the hub listens: 127.0.0.1 unless the teacher passes an address; HTTPS with a
# certificate. The hub's own API and the proxy's API stay on 127.0.0.1.
scheme = "https" if env("MGPU_HUB_SSL_CERT") else "http"
c.JupyterHub.bind_url = f"{scheme}://{env('MGPU_HUB_IP', '127.0.0.1')}:{env('MGPU_HUB_PORT', '8000')}"
if env("MGPU_HUB_SSL_CERT"):
    c.JupyterHub.ssl_cert = env("MGPU_HUB_SSL_CERT")
    c.JupyterHub.ssl_key = env("MGPU_HUB_SSL_KEY")
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{env('MGPU_HUB_API_PORT', '8081')}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env('MGPU_HUB_PROXY_API_PORT', '8001')}"
c.ConfigurableHTTPProxy.command = [os.path.join(root, ".venv", "hub-proxy", "node_modules",
                                                ".bin", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = os.path.join(state, "proxy.pid")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(state, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(state, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(state, "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every student's server
c.JupyterHub.cleanup_proxy = True

# Who: system accounts in the class group, by their system password.
group = env("MGPU_HUB_GROUP", "mgpu-students")
c.JupyterHub.authenticator_class = "pam"
c.PAMAuthenticator.allowed_groups = {group}
c.PAMAuthenticator.open_sessions = False  # no login session (utmp, pam_systemd) per server

# What each student gets: JupyterLab from the project's .venv (its python3 kernel is the
# project's), in the student's home, where hub_students.py put the student edition.
c.JupyterHub.spawner_class = "hub_spawner.ClassSpawner"
c.ClassSpawner.class_group = group
c.ClassSpawner.cores_per_student = int(env("MGPU_HUB_CORES", "2"))
c.Spawner.mem_limit = env("MGPU_HUB_MEM", "3G") or None
c.Spawner.cmd = [os.path.join(venv_bin, "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab/tree/mgpu_lab"
c.Spawner.notebook_dir = "~"
# jupyter/hub_user/: JupyterLab settings for students (no news or update checks online).
# PYTHONFAULTHANDLER: a kernel killed by a fatal signal (a crash in compiled code) prints
# its Python stack into the hub's log, where the teacher looks, instead of just restarting.
c.Spawner.environment = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
                         "JUPYTER_CONFIG_PATH": os.path.join(here, "hub_user"),
                         "PYTHONFAULTHANDLER": "1"}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120

# Forgotten servers: the culler (a hub service with only the rights it needs) stops any
# server idle for MGPU_HUB_IDLE seconds (default one hour), checking every 5 minutes.
idle = int(env("MGPU_HUB_IDLE", "3600"))
c.JupyterHub.services = [{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={idle}",
                f"--cull-every={min(300, max(idle // 2, 10))}"],
}]
c.JupyterHub.load_roles = [{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}]

# Stopping: each server (and the culler) gets 5 s after SIGINT, then 5 s after SIGTERM.
c.LocalProcessSpawner.interrupt_timeout = 5
c.LocalProcessSpawner.term_timeout = 5
