-- Every source's feature windows (one row per window) in one relation.
{{ union_sources('feature_windows') }}
