"""The jobs that run the model over data, one sub-package per job.

- ``core``: what every job shares: torchrun process groups, where embeddings come from (cache or raw frames),
  the network of each stage and its rebuilding from a checkpoint, the user-error types.
- ``extract``: stage one, frozen encoders over a dataset into the feature cache.
- ``evaluate``: the evaluation loop, its outputs (mask PNGs, overlays, figures) and the hearing breakdown.
- ``train``: the one training loop and the two recipes that run it (stage two on the cache, stage three from
  raw frames), batch order, schedules, logging, GPU-resident splits, the official-weights importer.
- ``predict``: a trained model on a user's own video or frames folder, the overlay writer, the app, curves.
- ``experiment``: thesis tables as specs run over seeds, keyed on everything that produced each run.
- ``demo``: the whole pipeline on the embedded synthetic data.

Imports flow one way: core -> extract, evaluate -> train -> experiment; predict uses core; demo sits on top
(tests/test_layering.py checks it).
"""
