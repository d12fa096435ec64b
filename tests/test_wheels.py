"""The setup rule without the network (`make wheels`, then `make setup` on a laptop).

A wheels folder filled by ``pip download`` with three light, pure-python pins of
requirements.txt installs into a fresh virtual environment with the index disabled, and
the Makefile's own setup rule installs from ``wheels/`` when it exists. The setup rule
also refuses, in one line, a machine without the C++ compiler Theano needs.

Downloading the three wheels needs the package index once; without it the tests skip,
except on CI (``CI`` set), where that is a failure.
"""
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
LIGHT = ("tqdm", "pyparsing", "hypothesis")  # pure python; hypothesis brings 2 more wheels
MAKE = shutil.which("make")


def _pins():
    """{name: version} for every `name==version` line of requirements.txt."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if "==" in spec:
            name, version = spec.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _offline_env():
    """This environment without pip's configuration: only the folder given may be used,
    and an index, if anything asked one, would be unreachable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """A folder with the three pinned packages, their dependencies, and setuptools (to
    build the project's editable install offline), downloaded the way `make wheels` does."""
    folder = tmp_path_factory.mktemp("wheels")
    pins = _pins()
    wanted = [f"{name}=={pins[name]}" for name in LIGHT] + ["setuptools>=61"]
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet",
                        "--only-binary=:all:", "-d", str(folder), *wanted],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        reason = f"pip download failed (no package index?):\n{r.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


def _versions(python, names):
    code = ("import importlib.metadata as m, sys; "
            "print(' '.join(m.version(n) for n in sys.argv[1:]))")
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True,
                         check=True)
    return dict(zip(names, out.stdout.split()))


def test_a_fresh_venv_installs_the_pins_from_the_folder_with_the_index_disabled(
        wheelhouse, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)  # ensurepip: no network
    python = env_dir / "bin" / "python"
    pins = _pins()
    wanted = [f"{name}=={pins[name]}" for name in LIGHT]
    pip = [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse)]
    r = subprocess.run([*pip, *wanted], capture_output=True, text=True, env=_offline_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert _versions(python, LIGHT) == {name: pins[name] for name in LIGHT}
    # and nothing else is reachable: a pin that is not in the folder cannot be installed
    r = subprocess.run([*pip, f"numpy=={pins['numpy']}"], capture_output=True, text=True,
                       env=_offline_env())
    assert r.returncode != 0 and "No matching distribution" in r.stderr, r.stderr


def _project_copy(folder, wheelhouse, requirements):
    """The files the setup rule reads: Makefile, pyproject.toml, README.md (the package's
    long description), a requirements.txt of our choosing and an empty package."""
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, folder / name)
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (folder / "mgpu_lab").mkdir()
    (folder / "mgpu_lab" / "__init__.py").write_text("")
    if wheelhouse is not None:
        shutil.copytree(wheelhouse, folder / "wheels")


@pytest.mark.skipif(MAKE is None, reason="no make on PATH")
def test_make_setup_installs_from_wheels_without_the_network(wheelhouse, tmp_path):
    pins = _pins()
    _project_copy(tmp_path, wheelhouse, [f"{name}=={pins[name]}" for name in LIGHT])
    r = subprocess.run([MAKE, "setup", f"PYTHON={sys.executable}"], cwd=tmp_path,
                       capture_output=True, text=True, env=_offline_env(), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--no-index --find-links wheels" in r.stdout
    python = tmp_path / ".venv" / "bin" / "python"
    assert _versions(python, LIGHT) == {name: pins[name] for name in LIGHT}
    assert _versions(python, ["mgpu_lab"]) == {"mgpu_lab": "0.1.0"}  # the editable install


@pytest.mark.skipif(MAKE is None, reason="no make on PATH")
def test_make_setup_without_a_cxx_compiler_stops_with_one_line_saying_how_to_get_one(
        tmp_path):
    _project_copy(tmp_path, None, ["tqdm"])
    empty = tmp_path / "no-compilers"
    empty.mkdir()  # PATH: no g++, no clang++ (the recipe needs only the shell's builtins)
    r = subprocess.run([MAKE, "setup", f"PYTHON={sys.executable}"], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(_offline_env(), PATH=str(empty)))
    assert r.returncode != 0
    message = [line for line in r.stderr.splitlines() if "C++ compiler" in line]
    assert len(message) == 1, r.stderr
    for how in ("sudo apt-get install g++", "sudo dnf install gcc-c++", "xcode-select --install"):
        assert how in message[0]
    assert not (tmp_path / ".venv").exists(), "the venv was created before the check"
