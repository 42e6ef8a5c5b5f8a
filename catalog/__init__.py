"""The catalog: schema, storage and every SQL statement of the MIWV pipeline."""

from catalog.errors import CatalogBusy, InvalidInput, UserError
from catalog.store import DEFAULT_PATH, Catalog

__all__ = ["Catalog", "CatalogBusy", "DEFAULT_PATH", "InvalidInput", "UserError"]
