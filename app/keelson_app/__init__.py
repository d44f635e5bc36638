"""Keelson's reference application: a small FastAPI service backed by PostgreSQL and Redis."""
