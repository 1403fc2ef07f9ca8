"""b2bua."""
