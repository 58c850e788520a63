-- Every source's scored windows in one relation.
{{ union_sources('predictions') }}
