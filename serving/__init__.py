"""Serving: the REST API over the live lakehouse (gold and silver Delta tables kept warm, the
warehouse marts through the read-only bi role), with Prometheus metrics at `/metrics`.

`serving.reads` holds the pure query functions and the warm table cache (the dashboard reuses
them); `serving.api` builds the FastAPI app; `periscope api` runs it with uvicorn.
"""
