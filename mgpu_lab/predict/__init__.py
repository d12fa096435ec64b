"""Layer 2: predictions from a model's graph, never measurements: ``graph`` (shapes and
FLOPs), ``memory`` (bytes per device), ``gpus`` (the catalogue, with sources),
``costmodel`` (step time on N GPUs). Imports layer 1 only."""
