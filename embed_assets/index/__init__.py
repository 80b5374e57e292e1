"""The chunk index, shared by the quality filter, mining and evaluation: base-model embeddings of
every chunk in LanceDB with a content-keyed embedding cache (``chunk_index``), and BM25 over the
same table (``lexical``)."""
