"""Layer 2: predictions from a model's graph, never measurements: ``graph`` (shapes and
FLOPs), ``memory`` (bytes per device), ``gpus`` (the catalogue, with sources and one
calibration each), ``costmodel`` (step time on N GPUs: host gather, ring or tree,
overlap and buckets), ``published`` (published throughputs to hold the model against).
Imports layer 1 only."""
