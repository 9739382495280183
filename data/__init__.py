"""Data contracts shared by every stage: Parquet schemas, the durable store, generations, labels,
pairs, targets and imports (the shapes world is its own package, :mod:`shapes`).

Analysts start here::

    from data import read_table
    labels = read_table("datasets/shapes", "binary_labels")   # a pandas DataFrame
"""

from core.errors import DataError, UserError
from data.store import Store, read_table
from data import marks as _marks  # noqa: F401  (registers the marks table)

__all__ = ["DataError", "UserError", "Store", "read_table"]
