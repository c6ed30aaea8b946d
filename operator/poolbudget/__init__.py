"""poolbudget: keep the sum of every app's PostgreSQL connection pools within the database's real limit."""

__version__ = "0.1.0"
