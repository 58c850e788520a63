"""Spark Structured Streaming stages: the session factory, the bronze job and the silver jobs.

Each step is a pure `DataFrame -> DataFrame` function plus a thin read/write wrapper.
"""

from spark_streaming.session import build_spark_session, spark_jars

__all__ = ["build_spark_session", "spark_jars"]
