"""The LanceDB chunk index and positive-aware hard-negative mining."""
