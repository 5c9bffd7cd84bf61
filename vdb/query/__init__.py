"""Payload queries: the filter language (filters.py) and the columnar payload index it runs on (payloads.py)."""
