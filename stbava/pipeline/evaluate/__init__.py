"""Scoring a trained model with AVSBench's metrics (``loop``: the evaluation loop and the ``eval`` job;
``outputs``: mask PNGs, overlays, similarity figures; ``hearing``: frame IoU per hearing condition on synthetic
data). Imports ``pipeline.core`` only, so training can validate with it."""
