"""Scoring and filtering synthetic question/chunk pairs."""
