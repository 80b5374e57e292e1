"""A teacher that labels training triples (GPL-style pseudo-labels) and judges retrieval."""
