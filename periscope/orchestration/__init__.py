"""Orchestrated batch work with Dagster: `periscope orchestrate` serves these definitions.

The lake tables (Kafka topic -> bronze -> silver -> gold, from the source contracts) are
observed source assets whose data version is their Delta version; `periscope warehouse load`
is an asset per source and the dbt models are assets (dagster-dbt over dbt_project's manifest);
a sensor loads and builds when new silver or gold versions appear, and schedules run the
warehouse hourly, the retrain daily, the forecast health check hourly and Delta maintenance
hourly. Freshness checks watch gold and the marts.

Stage work runs as `periscope ...` subprocesses (and dbt as dbt's own), so no stage is imported
here and Spark, Ray and model memory never stays in Dagster's processes. Importing this package
does not import Dagster: `definitions` does.
"""

__all__: list[str] = []
