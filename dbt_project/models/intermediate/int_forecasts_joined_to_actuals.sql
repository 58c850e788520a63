-- Each forecast beside the actual of its target hour, once that has arrived (macros/forecasts.sql:
-- a forecast series' actual is the hourly mean, sum or count its contract names).
{{ forecasts_joined_to_actuals(ref('int_forecasts_unioned')) }}
