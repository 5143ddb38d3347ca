"""Data preparation (sources → Parquet store) and loading (store → in-memory arrays)."""

from .prepare import ensure_prepared, prepare_folder, prepare_mnist
from .store import Dataset, load_dataset, read_manifest

__all__ = ["Dataset", "ensure_prepared", "load_dataset", "prepare_folder", "prepare_mnist", "read_manifest"]
