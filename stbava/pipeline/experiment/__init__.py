"""``stbava experiment``: thesis tables as YAML specs (``spec``), run over seeds by a resumable runner
(``runner``), each run keyed on everything that produced it (``key``), reported as tables and a sweep plot
(``report``). Imports ``pipeline.core``, ``pipeline.evaluate`` and ``pipeline.train``."""
