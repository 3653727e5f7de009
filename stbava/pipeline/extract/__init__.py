"""Stage one: the frozen image encoder and VGGish run once over a dataset into the feature cache
(``features``: the ``extract-features`` job, resume, writer thread, torchrun shards; ``clip_encoding``: one clip's
inputs and features). Imports ``pipeline.core`` only."""
