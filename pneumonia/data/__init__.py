"""The dataset: sources (folders, archives, downloads), image quality, patient splits, ingest's
records and the prepared arrays."""
