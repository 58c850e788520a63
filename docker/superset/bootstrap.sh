#!/usr/bin/env bash
# Superset start-up for the Periscope stack: migrate the metadata DB (SQLite in the
# superset-home volume), make sure the admin exists, sync roles/permissions, register the
# warehouse as the read-only bi_reader, then hand over to the image's server script.
# Every secret arrives through the environment (docker-compose.yaml, ${...:?} variables).
set -euo pipefail

: "${SUPERSET_SECRET_KEY:?}"
: "${SUPERSET_ADMIN_PASSWORD:?}"
: "${PERISCOPE_POSTGRES_BI_PASSWORD:?}"

superset db upgrade
# Prints an error and exits 0 when the admin already exists (restarts).
superset fab create-admin \
  --username "${SUPERSET_ADMIN_USERNAME:-admin}" \
  --firstname Periscope --lastname Admin \
  --email "${SUPERSET_ADMIN_EMAIL:-admin@periscope.local}" \
  --password "$SUPERSET_ADMIN_PASSWORD"
superset init

# URL-encode the password; never echo the URI.
warehouse_uri="$(python - <<'PY'
import os
from urllib.parse import quote

password = quote(os.environ["PERISCOPE_POSTGRES_BI_PASSWORD"], safe="")
user = quote(os.environ.get("PERISCOPE_POSTGRES_BI_USER", "bi_reader"), safe="")
host = os.environ.get("PERISCOPE_POSTGRES_HOST", "postgres")
port = os.environ.get("PERISCOPE_POSTGRES_PORT", "5432")
database = os.environ.get("PERISCOPE_POSTGRES_DB", "periscope")
print(f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{database}")
PY
)"
superset set-database-uri --database_name "Periscope warehouse" --uri "$warehouse_uri" \
  || echo "periscope-bootstrap: could not register the warehouse; add it in the UI" >&2
unset warehouse_uri

exec /usr/bin/run-server.sh
