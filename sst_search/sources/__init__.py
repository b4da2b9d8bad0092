"""Where a collection's items and pixels come from: manifests, Darwin Core tables and archives, URLs."""

from .dwca import read_dwca
from .items import Item, SourceError, is_url, local_location

__all__ = ["Item", "SourceError", "is_url", "local_location", "read_dwca"]
