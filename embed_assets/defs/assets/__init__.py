"""Assets, one module per pipeline stage (and Dagster asset group)."""
