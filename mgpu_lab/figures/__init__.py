"""Layer 4: what readers see: ``plots`` (matplotlib figures, each labelled measured or
predicted). Imports layers 1-3 and ``measure.machine`` for provenance."""
