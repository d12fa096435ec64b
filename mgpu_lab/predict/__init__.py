"""Layer 2: predictions from a model's graph, never measurements: ``graph`` (shapes and
FLOPs), ``memory`` (bytes per device, per precision, with or without activation
recomputation), ``precision`` (bytes per value: float32, or mixed 16-bit), ``gpus`` (the
catalogue, with sources and a calibration per GPU and precision, or none, said so),
``algorithms`` (one exchange of the
gradient: host gather, ring, sharded, halving-doubling, recursive doubling, double tree),
``costmodel`` (step time on N GPUs of one node, overlap and buckets), ``network`` (nodes
joined by a network; the published multi-node figures), ``critical`` (the critical batch
per device below which a step is communication-bound), ``published`` (published
throughputs to hold the model against), ``validation`` (its errors, per source, held
out), ``batch_scaling`` (the statistical batch limit: McCandlish et al.'s steps-samples
trade-off fitted to measured steps) and ``time_to_accuracy`` (those steps times the cost
model's step: the three limits on the batch, the best N). Imports layer 1 only."""
