"""The property-card service: registry, RFC 9162 transparency log with COSE Receipts,
verification, ownership tests and disputes over HTTP (FastAPI + SQLAlchemy)."""
