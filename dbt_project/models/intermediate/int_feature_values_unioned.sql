-- Every source's feature values (one row per window and aggregate column) in one relation.
{{ union_sources('feature_values') }}
