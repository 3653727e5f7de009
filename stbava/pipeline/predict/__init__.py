"""A trained model on a user's media: ``windows`` (the model side, window by window), ``run`` (one input or a
folder, staged outputs), ``outputs`` and ``overlay`` (mask PNGs, the overlay video with its audio), ``app`` (the
Gradio app) and ``plot`` (training curves). Imports ``pipeline.core`` only."""
