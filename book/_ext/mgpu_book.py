"""Sphinx extension for the book: keep executed chapters in step with the library.

myst-nb caches a chapter's outputs by the chapter's own text. The chapters call
``mgpu_lab``, so when the library changes an unchanged chapter would still show the
outputs of the old code. This extension

* makes every page depend on the library's source files (Sphinx re-reads a page when one
  of them is newer than the last build), and
* empties the execution cache when the library's content changed since the last build
  (:func:`mgpu_lab.sources.library_hash`, the one hash every cache of the project uses,
  kept beside the cache), so re-read pages execute again.

It also keeps every page free of network loads and script errors:

* a page that holds a web explorer (``mgpu_lab.figures.explorers``: an element of class
  ``mgpu-explorer``) gets the vendored Vega and Vega-Lite scripts from ``_static/vendor``
  and the explorers' own scripts (``_static/mgpu-explorer.js``, ``explorer-*.js``); other
  pages load none of them;
* the kernels that execute the chapters see ``MGPU_WEB_BOOK=1``, so an explorer's output
  is its HTML for the web book (in JupyterLab it is a Vega-Lite chart the lab draws:
  ``mgpu_lab.figures.labcharts``);
* each inline script appears once. Sphinx 7.4 adds the assets that extensions register
  after the builder started (sphinx-thebe's ``const THEBE_JS_URL = ...``, registered in
  ``env-before-read-docs``; sphinx-togglebutton's selector) a second time when it prepares
  writing, because it re-adds them as ``_JavaScript('')`` beside the ``_JavaScript(None)``
  it already holds; a second ``const`` of the same name is a SyntaxError in the browser;
* a cell's printed lines appear once in the executed notebooks (``_build/jupyter_execute``,
  which the student edition is made from). With ``nb_merge_streams``, myst-nb 1.4's
  ``coalesce_streams`` appends every later stdout block to the first *in place*, then
  renders the merged list; the notebook it writes keeps the grown first block and the
  later ones too, so a cell that printed, glued a value and printed again showed its
  lines twice there. Here it merges copies;
* the ipywidgets state myst-nb saves from executed widgets is dropped: ``_config.yml`` sets
  ``nb_ipywidgets_js: {}`` (myst-nb's default would load require.js and the widget manager
  from CDNs), so nothing on the page could read it, and the widgets need a kernel anyway.
"""
import copy
import os
import shutil
from pathlib import Path

import myst_nb.core.render

import kernel_poll

from mgpu_lab.sources import library_files, library_hash

__all__ = ["setup", "VENDOR_JS", "EXPLORER_JS"]

_STAMP = "mgpu_lab.sha256"


def _cache_dir(app):
    configured = getattr(app.config, "nb_execution_cache_path", "")
    return Path(configured) if configured else Path(app.outdir).parent / ".jupyter_cache"


def _clear_stale_cache(app, config):
    """Empty the execution cache if it was filled by a different library."""
    cache, digest = _cache_dir(app), library_hash()
    stamp = cache.parent / _STAMP  # beside the cache, so clearing the cache keeps the rule
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    if cache.exists():
        print(f"mgpu_book: mgpu_lab changed since the last build; emptying {cache}")
        shutil.rmtree(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")


def _depend_on_library(app, docname, source):
    for path in library_files():
        app.env.note_dependency(str(path))


def _merge_copies(merge):
    """``merge`` (myst-nb's ``coalesce_streams``), on copies of the outputs: the
    notebook's own outputs are left as the kernel sent them."""
    def merged(outputs):
        return merge(copy.deepcopy(outputs))
    merged.wraps = merge
    return merged


VENDOR_JS = ("vendor/vega.min.js", "vendor/vega-lite.min.js")  # in book/_static
EXPLORER_JS = ("mgpu-explorer.js", "explorer-batch-limits.js", "explorer-throughput.js",
               "explorer-time-to-accuracy.js")
WEB_BOOK_ENV = "MGPU_WEB_BOOK"  # as mgpu_lab.figures.labcharts.WEB_BOOK_ENV
EXPLORER_MARK = 'class="mgpu-explorer"'
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _explorer_scripts(app, pagename, templatename, context, doctree):
    """Vega, Vega-Lite and the explorers' scripts, for this page only, if it holds an
    explorer (plain <script> tags in the head: loaded before the page's body is parsed)."""
    if EXPLORER_MARK in context.get("body", ""):
        for path in VENDOR_JS + EXPLORER_JS:
            app.add_js_file(path, priority=450)


def _script_key(js):
    attrs = getattr(js, "attributes", {})
    return (str(getattr(js, "filename", js) or ""), tuple(sorted(attrs.items())))


def _clean_scripts(app, pagename, templatename, context, doctree):
    """Each script once (by file and attributes), and no ipywidgets state."""
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, kept = set(), []
    for js in scripts:
        key = _script_key(js)
        if key in seen or getattr(js, "attributes", {}).get("type") == WIDGET_STATE:
            continue
        seen.add(key)
        kept.append(js)
    scripts[:] = kept


def setup(app):
    os.environ[WEB_BOOK_ENV] = "1"  # inherited by the kernels that execute the chapters
    kernel_poll.install()  # no cell waits its whole timeout for a reply already there
    render = myst_nb.core.render
    if not hasattr(render.coalesce_streams, "wraps"):  # once, however often Sphinx loads us
        render.coalesce_streams = _merge_copies(render.coalesce_streams)
    app.connect("config-inited", _clear_stale_cache)
    app.connect("source-read", _depend_on_library)
    app.connect("html-page-context", _explorer_scripts)
    app.connect("html-page-context", _clean_scripts, priority=900)  # after myst-nb's (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
