#!/usr/bin/env bash
# Periscope warehouse roles. Run once by the postgres image's entrypoint, on an empty data
# directory, as the superuser (docker-compose.yaml mounts this folder at
# /docker-entrypoint-initdb.d). Passwords come from the container's environment, which
# docker-compose.yaml fills from ${PERISCOPE_POSTGRES_*_PASSWORD:?...}; nothing is stored here.
#
#   periscope  owns the `periscope` database and everything dbt builds in it.
#   bi_reader  read-only (Superset): CONNECT, USAGE on schemas, SELECT on tables, and every
#              transaction read-only by default.
#
# No `set -u`: the entrypoint sources non-executable scripts into its own shell.
set -eo pipefail

: "${PERISCOPE_POSTGRES_OWNER_PASSWORD:?PERISCOPE_POSTGRES_OWNER_PASSWORD is not set}"
: "${PERISCOPE_POSTGRES_BI_PASSWORD:?PERISCOPE_POSTGRES_BI_PASSWORD is not set}"

# psql substitutes :'var' as a quoted literal; the quoted heredoc keeps bash out of it.
psql -v ON_ERROR_STOP=1 \
  --username "${POSTGRES_USER:-postgres}" \
  --dbname "${POSTGRES_DB:-periscope}" \
  --set=owner_password="$PERISCOPE_POSTGRES_OWNER_PASSWORD" \
  --set=bi_password="$PERISCOPE_POSTGRES_BI_PASSWORD" <<'SQL'
CREATE ROLE periscope LOGIN PASSWORD :'owner_password';
CREATE ROLE bi_reader LOGIN PASSWORD :'bi_password';

ALTER DATABASE periscope OWNER TO periscope;
ALTER SCHEMA public OWNER TO periscope;
REVOKE ALL ON DATABASE periscope FROM PUBLIC;
GRANT CONNECT ON DATABASE periscope TO bi_reader;

-- What exists now ...
GRANT USAGE ON SCHEMA public TO bi_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO bi_reader;
-- ... and whatever periscope (dbt) creates later, in any schema.
ALTER DEFAULT PRIVILEGES FOR ROLE periscope GRANT USAGE ON SCHEMAS TO bi_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE periscope GRANT SELECT ON TABLES TO bi_reader;

ALTER ROLE bi_reader SET default_transaction_read_only = on;
SQL
