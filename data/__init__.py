"""Data contracts shared by every stage: Parquet schemas, the durable store, generations, labels,
pairs, targets and imports (the shapes world is its own package, :mod:`shapes`).

Analysts start here::

    from data import read_table
    labels = read_table("datasets/shapes", "binary_labels")   # a pandas DataFrame: current answers, gold out
"""

from core.errors import DataError, UserError
from data.store import Store
from data.read import read_table  # also registers the marks table (data.marks)

__all__ = ["DataError", "UserError", "Store", "read_table"]
