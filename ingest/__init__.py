"""Producers into Kafka `<source>-raw`: replay of the real datasets, Open-Meteo live, chaos.

Every path sends through one producer (`producer`), keyed by the contract's entity key so an
entity's records stay in order on one partition. `datasets` holds the readers of the real
datasets that the contracts name; `replay` sends a source's history in event-time order
(paced, rebased to now, or following the clock); `live` polls Open-Meteo (`open_meteo`) and
sends new weather observations; `chaos` adds the malformed records silver must quarantine;
`state` keeps what producers remember between runs. `cli` mounts the commands under
`periscope ingest`.
"""
