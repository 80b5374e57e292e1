"""The thin Dagster layer: assets, resources, run config, checks, sensors, jobs and one Definitions."""
