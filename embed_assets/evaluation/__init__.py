"""BEIR-style retrieval evaluation of base vs fine-tuned models."""
