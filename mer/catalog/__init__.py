"""Catalog: the SQL tables the tagger writes and analysts query (SQLite or PostgreSQL), their Alembic migrations,
record checks, the idempotent writer and the analysts' SQL. Knows nothing of the model, training or features."""
from __future__ import annotations

from mer.catalog.queries import ANALYST_QUERIES
from mer.catalog.records import FailureRecord, LabelRecord, ListedItem, branch_attention
from mer.catalog.schema import (HEAD_REVISION, MODALITIES, TIMELINE_HEAD_KEYS, TIMELINE_KEYS, VERSION_TABLE,
                                catalog_revision, catalog_url, create_catalog_engine, downgrade_catalog, metadata,
                                upgrade_catalog)
from mer.catalog.writer import DEAD_AFTER, CatalogWriter

__all__ = [
    "ANALYST_QUERIES", "CatalogWriter", "DEAD_AFTER", "FailureRecord", "HEAD_REVISION", "LabelRecord", "ListedItem",
    "MODALITIES", "TIMELINE_HEAD_KEYS", "TIMELINE_KEYS", "VERSION_TABLE", "branch_attention", "catalog_revision",
    "catalog_url", "create_catalog_engine", "downgrade_catalog", "metadata", "upgrade_catalog",
]
