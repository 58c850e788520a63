-- Every source's feature windows (one row per window and measure) in one relation.
{{ union_sources('features') }}
