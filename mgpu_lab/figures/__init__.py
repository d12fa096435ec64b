"""Layer 4: what readers see: ``plots`` (matplotlib figures, each labelled measured or
predicted), ``tables`` (HTML tables), ``widgets`` (ipywidgets, for a running kernel) and
``explorers`` (the web book's explorers: every setting computed when the book is built,
drawn in the browser with the vendored Vega-Lite; chapter 13's in ``tta_explorer``, its
figures in ``tta_plots``). Imports layers 1-3 and ``measure``
for provenance."""
