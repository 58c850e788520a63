"""BI review of the marts: Superset dashboards as code (`periscope bi`).

`superset/bundle/` holds the dashboards in the YAML bundle format Superset exports and imports;
`superset/provision.py` reads, rewrites and writes that bundle (pure) and drives Superset's REST
API (`superset/client.py`); `cli` holds the commands. Superset itself is a project service
(`periscope services up superset`, periscope/services/superset.py).
"""
