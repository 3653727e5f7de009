"""Training: one loop (``loop``: setup, resume, epoch, validate, save) run by two recipes (``stage2`` on cached
embeddings, ``stage3`` audio adapters from raw frames); ``batches``, ``lr_schedule``, ``logger``, ``resident`` (a split
held on the GPU) and ``official_import`` (published ST-BAVA weights into a checkpoint). Imports ``pipeline.core``
and ``pipeline.evaluate`` (validation)."""
