"""The recipe: every setting defined once (``settings``), named presets per kind of corpus
(``presets``), and the per-corpus choice among them by validation (``selection``)."""
