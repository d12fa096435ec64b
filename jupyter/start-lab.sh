#!/bin/sh
# JupyterLab from .venv, opened at the chapters (book/): `make lab` runs this, and so does
# tests/test_lab.py. Extra arguments override the defaults (make lab LAB_ARGS="...").
#
# The defaults live in files in this folder, which JUPYTER_CONFIG_PATH puts first on
# Jupyter's config search path (so they beat ~/.jupyter, and command-line options beat
# them; a repeated command-line option would be an error, hence files):
# - jupyter_server_config.json: listen on 127.0.0.1 only (the server makes a random token
#   and prints the URL that carries it); jupyter-lsp does not search for language servers
#   (none is installed, and its search, `npm prefix -g` in a thread, can hold up the
#   server's exit). The file browser does not list the build's files beside the chapters
#   (ContentsManager.hide_globs: _ext, _static, images, *.bib, plus Jupyter's defaults);
#   they are still served, so the chapters' images and links work.
# - labconfig/default_setting_overrides.json: JupyterLab's default settings. Double-click
#   opens a .md file as a notebook (jupytext's "Jupytext Notebook" viewer); no autosave,
#   because saving a chapter rewrites its .md file in jupytext's own layout (File > Save,
#   Ctrl+S, still saves); no news or update checks go to the internet. Settings > Settings
#   Editor still overrides them.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
JUPYTER_CONFIG_PATH="$root/jupyter${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"
export JUPYTER_CONFIG_PATH
cd "$root/book"  # the server's root folder: the file browser shows the chapters
exec "$root/.venv/bin/jupyter" lab "$@"
