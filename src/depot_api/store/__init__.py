"""Persistence: one Store interface, implemented over SQLAlchemy Core for SQLite and PostgreSQL."""
