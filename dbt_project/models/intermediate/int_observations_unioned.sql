-- Every source's readings in one relation.
{{ union_sources('observations') }}
