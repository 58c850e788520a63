"""Producers into Kafka `<source>-raw`: replay of the real datasets, Open-Meteo live, chaos.

Not built yet (issue: ingest and bronze).
"""
