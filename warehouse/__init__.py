"""The Delta -> Postgres loader, warehouse roles and BI assets.

Not built yet (issue: warehouse).
"""
