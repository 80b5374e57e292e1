"""Training examples and contrastive fine-tuning of the bi-encoder."""
