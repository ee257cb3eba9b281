"""Alembic migrations of the mer catalog; run them with ``mer.catalog.upgrade_catalog(url)``."""
