"""Gold: `periscope score`, the always-on stage that scores silver feature windows on Ray.

Silver feature windows in, `gold/<source>_predictions` rows and `<source>-predictions`
messages out. One module per step:

- `rounds`: the loop (`run_scoring`) and one round (`score_round`): which windows are new,
  read, score, publish, write; the module docstring tells how gold tracks what it scored.
- `plan`: how many silver batches a round takes, which actor scores an entity.
- `actors`: the Ray actor pool (`ScorerPool`) holding the champion models.
- `scoring`: the pure core, `score_windows`: feature windows -> gold rows, with the
  per-series forecast caches.
- `table`: the gold schema, its path, the scored-through mark, the MERGE.
- `messages`: gold rows as `<source>-predictions` JSON, and publishing them.
- `events`: the speed layer: each new silver observation of a source with event predictions
  scored by its per-event champion into `gold/<source>_<event>_predictions`
  (`gold/taxi_trip_predictions`).

The Ray runtime comes from `ml.ray_session`; nothing here imports `ml.training`.
"""

from ml.gold.actors import ScorerPool, ScoringError, scoring_pool
from ml.gold.events import (
    EVENT_SCORE_APP_ID,
    EventRoundReport,
    event_predictions_path,
    event_rows,
    event_schema,
    score_event_round,
    scored_events_through,
    write_event_predictions,
)
from ml.gold.messages import (
    event_prediction_messages,
    prediction_messages,
    publish_event_predictions,
    publish_predictions,
)
from ml.gold.plan import entity_owner, plan_round, split_by_entity
from ml.gold.rounds import RoundReport, history_for, pending_after, run_scoring, score_round
from ml.gold.scoring import HISTORY_HOURS, LoadedModels, history_window, score_windows, to_arrow
from ml.gold.table import (
    FORECAST_TYPE,
    SCORE_APP_ID,
    gold_columns,
    gold_schema,
    predictions_path,
    scored_through,
    write_predictions,
)

__all__ = [
    "EVENT_SCORE_APP_ID",
    "EventRoundReport",
    "event_prediction_messages",
    "event_predictions_path",
    "event_rows",
    "event_schema",
    "publish_event_predictions",
    "score_event_round",
    "scored_events_through",
    "write_event_predictions",
    "FORECAST_TYPE",
    "HISTORY_HOURS",
    "SCORE_APP_ID",
    "LoadedModels",
    "RoundReport",
    "ScorerPool",
    "ScoringError",
    "entity_owner",
    "gold_columns",
    "gold_schema",
    "history_for",
    "history_window",
    "pending_after",
    "plan_round",
    "prediction_messages",
    "predictions_path",
    "publish_predictions",
    "run_scoring",
    "score_round",
    "score_windows",
    "scored_through",
    "scoring_pool",
    "split_by_entity",
    "to_arrow",
    "write_predictions",
]
