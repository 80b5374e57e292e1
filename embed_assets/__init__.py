"""embed_assets: turn a folder of documents into a domain-adapted embedding model.

The ML work lives in plain, Dagster-free sub-packages (one per pipeline stage):

- ``ingest``      read documents, chunk them
- ``generation``  write questions for chunks (model-free templates, LLMs through litellm)
- ``quality``     score and filter question/chunk pairs
- ``splitting``   train/val/test split grouped by source document, BEIR export
- ``mining``      LanceDB chunk index and positive-aware hard-negative mining
- ``training``    contrastive fine-tuning with sentence-transformers
- ``evaluation``  BEIR metrics (pytrec_eval) for base vs fine-tuned
- ``export``      ONNX export and parity checks
- ``serving``     an OpenAI-compatible embeddings HTTP server over the ONNX model

``embed_assets.defs`` is the thin Dagster layer that wires them into assets.
"""

__version__ = "0.1.0"
