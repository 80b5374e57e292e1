"""Train/val/test splits grouped by source document, and BEIR export."""
