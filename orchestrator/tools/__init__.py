"""Adapters over external programs; the only modules that start processes."""
