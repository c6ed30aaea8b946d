"""Shared fixtures. The real-server fixtures live in their own modules and are registered here."""
