"""Static checks of docker-compose.yaml (no Docker engine, no network).

The dev machines have no Docker engine and no `docker compose` plugin, so the compose file is
validated against the Compose Specification JSON schema (../shared/schemas/compose-spec.json,
see its README) and then against the stack's own invariants: services, resource limits,
health checks and start order, one network, pinned images, no literal secrets, the shared
lake volume, and the PERISCOPE_* settings the code reads.

Each invariant is a function returning the problems it finds; the positive tests assert an
empty list and the negative tests feed deliberately broken copies to prove the checks bite.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema.validators import validator_for

from periscope.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
LOCK_FILE = REPO_ROOT / "requirements.lock"
PYPROJECT = REPO_ROOT / "pyproject.toml"

NETWORK = "periscope"
LAKE_VOLUME = "lake"
LAKE_TARGET = "/opt/periscope/lake"

SPARK_WORKERS = [f"spark-worker-{i}" for i in range(1, 5)]
RAY_WORKERS = [f"ray-worker-{i}" for i in range(1, 5)]
LAKE_SERVICES = ["spark-master", *SPARK_WORKERS, "ray-head", *RAY_WORKERS]
REQUIRED_SERVICES = {
    "kafka",
    "kafka-ui",
    "spark-master",
    *SPARK_WORKERS,
    "ray-head",
    *RAY_WORKERS,
    "postgres",
    "superset",
}

GIB = 1024**3
EXPECTED_LIMITS: dict[str, tuple[float, int]] = {
    "spark-master": (1.0, 2 * GIB),
    "ray-head": (1.0, 2 * GIB),
    **{worker: (1.0, 3 * GIB) for worker in SPARK_WORKERS + RAY_WORKERS},
}

# (dependent, dependency) pairs that must wait for the dependency to be healthy.
HEALTHY_DEPENDENCIES = [
    *[(worker, "spark-master") for worker in SPARK_WORKERS],
    *[(worker, "ray-head") for worker in RAY_WORKERS],
    ("kafka-ui", "kafka"),
    ("superset", "postgres"),
]

APP_ENV = {
    "PERISCOPE_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "PERISCOPE_SPARK_MASTER": "spark://spark-master:7077",
    "PERISCOPE_RAY_ADDRESS": "ray://ray-head:10001",
    "PERISCOPE_LAKE_ROOT": LAKE_TARGET,
    "PERISCOPE_POSTGRES_HOST": "postgres",
    "PERISCOPE_POSTGRES_PORT": "5432",
}

Doc = dict[str, Any]


# --------------------------------------------------------------------------- helpers


_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kmgt])b?|b)?$", re.IGNORECASE)
_MEMORY_UNITS = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_memory(value: object) -> int:
    """Compose/Docker memory size ("3g", "3G", "3072m", "512mb", bytes) -> bytes (1024-based)."""
    if isinstance(value, bool):
        raise ValueError(f"not a memory size: {value!r}")
    if isinstance(value, int):
        return value
    match = _MEMORY.match(str(value).strip())
    if not match:
        raise ValueError(f"not a memory size: {value!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _MEMORY_UNITS[unit])


def parse_cpus(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a CPU count: {value!r}")
    return float(value)


def image_pin_problem(image: object) -> str | None:
    """None when `image` names a fixed version (a real tag or a sha256 digest)."""
    if not isinstance(image, str) or not image.strip():
        return f"no image: {image!r}"
    if "$" in image:
        return f"interpolated, can be overridden at run time: {image}"
    if "@" in image:
        digest = image.split("@", 1)[1]
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else f"bad digest: {image}"
    last = image.rsplit("/", 1)[-1]  # a registry host may carry a :port
    if ":" not in last:
        return f"no tag (means latest): {image}"
    tag = last.split(":", 1)[1]
    if not tag or tag.lower() == "latest" or not re.search(r"\d", tag):
        return f"tag is not a version: {image}"
    return None


def environment(service: Doc) -> dict[str, str | None]:
    """A service's environment as a dict, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        return {key: value for key, value in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


_REQUIRED_REF = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}$")


def required_variable(value: str | None) -> str | None:
    """The variable name when `value` is exactly `${NAME:?message}`, else None."""
    match = _REQUIRED_REF.match(value or "")
    return match.group("name") if match else None


def healthcheck_command(service: Doc) -> str:
    test = (service.get("healthcheck") or {}).get("test", "")
    return " ".join(test) if isinstance(test, list) else str(test)


def dependencies(service: Doc) -> dict[str, str]:
    """depends_on as {service: condition}; the short (list) form means service_started."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: "service_started" for name in depends_on}
    return {name: spec.get("condition", "service_started") for name, spec in depends_on.items()}


def mounts(service: Doc) -> list[tuple[str, str | None, str]]:
    """(type, source, target) for each entry of a service's `volumes`."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            result.append((entry.get("type", "volume"), entry.get("source"), entry["target"]))
            continue
        parts = entry.split(":")
        if len(parts) == 1:
            result.append(("volume", None, parts[0]))
            continue
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        result.append((kind, source, target))
    return result


def service_networks(service: Doc) -> set[str]:
    networks = service.get("networks") or []
    return set(networks) if isinstance(networks, list) else set(networks.keys())


def is_one_shot(doc: Doc, name: str) -> bool:
    """A run-to-completion job: never restarted, and only ever awaited to *complete*."""
    services = doc["services"]
    if str(services[name].get("restart", "no")) != "no":
        return False
    awaited = [dependencies(svc).get(name) for svc in services.values()]
    conditions = {condition for condition in awaited if condition is not None}
    return conditions == {"service_completed_successfully"}


# --------------------------------------------------------------------------- checks


def limit_problems(doc: Doc) -> list[str]:
    problems = []
    for name, service in doc["services"].items():
        limits = (service.get("deploy") or {}).get("resources", {}).get("limits") or {}
        if "cpus" not in limits or "memory" not in limits:
            problems.append(f"{name}: no deploy.resources.limits cpus/memory")
            continue
        if not isinstance(limits["cpus"], str):
            problems.append(f"{name}: cpus should be a string like '1.0': {limits['cpus']!r}")
        try:
            cpus, memory = parse_cpus(limits["cpus"]), parse_memory(limits["memory"])
        except ValueError as error:
            problems.append(f"{name}: {error}")
            continue
        if cpus <= 0 or memory <= 0:
            problems.append(f"{name}: non-positive limits {cpus} / {memory}")
        if name in EXPECTED_LIMITS and (cpus, memory) != EXPECTED_LIMITS[name]:
            problems.append(f"{name}: limits {cpus} CPU / {memory} B, want {EXPECTED_LIMITS[name]}")
    return problems


def healthcheck_problems(doc: Doc) -> list[str]:
    problems = []
    for name, service in doc["services"].items():
        check = service.get("healthcheck")
        if check is None:
            if name in REQUIRED_SERVICES or not is_one_shot(doc, name):
                problems.append(f"{name}: long-running service without a healthcheck")
            continue
        command = healthcheck_command(service)
        if check.get("disable") in (True, "true") or command.strip() in ("", "NONE"):
            problems.append(f"{name}: healthcheck disabled")
    return problems


def dependency_problems(doc: Doc) -> list[str]:
    services = doc["services"]
    problems = []
    for name, service in services.items():
        for target, condition in dependencies(service).items():
            if target not in services:
                problems.append(f"{name}: depends on unknown service {target}")
            elif condition == "service_healthy" and "healthcheck" not in services[target]:
                problems.append(f"{name}: waits for {target} to be healthy, it has no healthcheck")
            elif condition == "service_completed_successfully" and not is_one_shot(doc, target):
                problems.append(f"{name}: waits for {target} to complete, it is long-running")
    for dependent, dependency in HEALTHY_DEPENDENCIES:
        condition = dependencies(services.get(dependent, {})).get(dependency)
        if condition != "service_healthy":
            problems.append(f"{dependent}: must wait for {dependency} healthy, has {condition}")
    # Start order must exist: no cycles (Kahn's algorithm).
    pending = {name: set(dependencies(svc)) & set(services) for name, svc in services.items()}
    while ready := [name for name, deps in pending.items() if not deps]:
        for name in ready:
            del pending[name]
        for deps in pending.values():
            deps.difference_update(ready)
    if pending:
        problems.append(f"dependency cycle among {sorted(pending)}")
    return problems


def secret_problems(doc: Doc) -> list[str]:
    problems = []
    for name, service in doc["services"].items():
        if service.get("env_file"):
            problems.append(f"{name}: env_file hides values from this check")
        for key, value in environment(service).items():
            if re.search("PASSWORD|SECRET", key, re.IGNORECASE) and not required_variable(value):
                problems.append(f"{name}: {key} is not a ${{VAR:?message}} reference")
    return problems


def network_problems(doc: Doc) -> list[str]:
    problems = []
    if set(doc.get("networks") or {}) != {NETWORK}:
        problems.append(
            f"top-level networks should be exactly {{{NETWORK}}}: {doc.get('networks')}"
        )
    for name, service in doc["services"].items():
        if "network_mode" in service:
            problems.append(f"{name}: network_mode bypasses the {NETWORK} network")
        if service_networks(service) != {NETWORK}:
            problems.append(f"{name}: networks {sorted(service_networks(service))}")
    return problems


def lake_problems(doc: Doc) -> list[str]:
    problems = []
    declared = doc.get("volumes") or {}
    if LAKE_VOLUME not in declared or (declared[LAKE_VOLUME] or {}).get("external"):
        problems.append(f"named volume {LAKE_VOLUME!r} is not declared by this file")
    for name in LAKE_SERVICES:
        service = doc["services"].get(name, {})
        if ("volume", LAKE_VOLUME, LAKE_TARGET) not in mounts(service):
            problems.append(f"{name}: volume {LAKE_VOLUME} not mounted at {LAKE_TARGET}")
    return problems


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(raw_text: str) -> Doc:
    # safe_load resolves anchors, aliases and `<<` merge keys, as Compose does. Aliased
    # nodes come back as one shared object; the JSON round trip gives every service its
    # own copy (Compose's semantics), so a mutation in a negative test stays local.
    document = yaml.safe_load(raw_text)
    assert isinstance(document, dict), "docker-compose.yaml is not a mapping"
    return json.loads(json.dumps(document))


@pytest.fixture(scope="module")
def services(compose: Doc) -> dict[str, Doc]:
    return compose["services"]


def validator_class_for(schema: Doc) -> Any:
    """The jsonschema validator for the schema's own `$schema`.

    The compose schema says "https://json-schema.org/draft-07/schema" (https, no '#'),
    which jsonschema's registry does not know under that spelling, so normalise it
    rather than letting validator_for() fall back to the latest draft.
    """
    declared = schema["$schema"]
    normalised = re.sub(r"^https://", "http://", declared).rstrip("#") + "#"
    cls = validator_for({"$schema": normalised}, default=None)
    if cls is None:
        raise LookupError(f"no jsonschema validator for $schema {declared!r}")
    return cls


@pytest.fixture
def schema() -> Doc:
    schema_file = Settings().shared_dir / "schemas" / "compose-spec.json"
    if not schema_file.is_file():
        pytest.fail(f"Compose schema missing: {schema_file} (see its README)")
    return json.loads(schema_file.read_text(encoding="utf-8"))


@pytest.fixture
def validator(schema: Doc) -> Any:
    cls = validator_class_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator: Any, document: Doc) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


# --------------------------------------------------------------------------- schema


def test_validator_matches_declared_draft(schema: Doc, validator: Any) -> None:
    from jsonschema import Draft7Validator

    assert "draft-07" in schema["$schema"]
    assert type(validator) is Draft7Validator


def test_compose_file_matches_the_compose_specification(validator: Any, compose: Doc) -> None:
    assert _errors(validator, compose) == []


def _set_cpus_to_list(doc: Doc) -> None:
    doc["services"]["spark-worker-1"]["deploy"]["resources"]["limits"]["cpus"] = ["1.0"]


def _bad_depends_on_condition(doc: Doc) -> None:
    doc["services"]["kafka-ui"]["depends_on"]["kafka"]["condition"] = "service_ready"


def _misspelt_service_key(doc: Doc) -> None:
    doc["services"]["kafka"]["imagee"] = doc["services"]["kafka"].pop("image")


def _numeric_healthcheck_interval(doc: Doc) -> None:
    doc["services"]["postgres"]["healthcheck"]["interval"] = 10


def _misspelt_top_level_key(doc: Doc) -> None:
    doc["servces"] = doc.pop("services")


@pytest.mark.parametrize(
    ("break_it", "path_prefix"),
    [
        (
            _set_cpus_to_list,
            ("services", "spark-worker-1", "deploy", "resources", "limits", "cpus"),
        ),
        (_bad_depends_on_condition, ("services", "kafka-ui", "depends_on")),
        (_misspelt_service_key, ("services", "kafka")),
        (_numeric_healthcheck_interval, ("services", "postgres", "healthcheck", "interval")),
        (_misspelt_top_level_key, ()),
    ],
    ids=["cpus-list", "depends-on-condition", "service-key", "interval-int", "top-level-key"],
)
def test_schema_validation_rejects_broken_copies(
    validator: Any,
    compose: Doc,
    break_it: Callable[[Doc], None],
    path_prefix: tuple[str, ...],
) -> None:
    broken = copy.deepcopy(compose)
    break_it(broken)
    errors = list(validator.iter_errors(broken))
    assert errors, f"{break_it.__name__}: the schema accepted a broken document"
    paths = [tuple(error.absolute_path) for error in errors]
    assert any(path[: len(path_prefix)] == path_prefix for path in paths), paths


# --------------------------------------------------------------------------- structure


def test_no_obsolete_version_key(compose: Doc) -> None:
    assert "version" not in compose


def test_required_services_exist(services: dict[str, Doc]) -> None:
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, sorted(missing)


def test_workers_share_one_definition(compose: Doc, services: dict[str, Doc]) -> None:
    assert any(key.startswith("x-") for key in compose), "no x- extension fragments"
    for group in (SPARK_WORKERS, RAY_WORKERS):
        first = services[group[0]]
        for worker in group[1:]:
            assert services[worker] == first, f"{worker} differs from {group[0]}"


def test_resource_limits(compose: Doc) -> None:
    assert limit_problems(compose) == []


def test_every_long_running_service_has_a_healthcheck(compose: Doc) -> None:
    assert healthcheck_problems(compose) == []


def test_dependencies_and_start_order(compose: Doc) -> None:
    assert dependency_problems(compose) == []


def test_single_network(compose: Doc) -> None:
    assert network_problems(compose) == []


def test_no_literal_secrets(compose: Doc) -> None:
    assert secret_problems(compose) == []


def test_lake_volume_on_spark_and_ray(compose: Doc) -> None:
    assert lake_problems(compose) == []


def test_every_image_is_pinned(services: dict[str, Doc]) -> None:
    problems = {name: image_pin_problem(svc.get("image")) for name, svc in services.items()}
    assert {name: problem for name, problem in problems.items() if problem} == {}


def test_built_images_start_from_pinned_bases(services: dict[str, Doc]) -> None:
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert "superset" in built, "superset is built from docker/superset (adds psycopg2)"
    for name, build in built.items():
        spec = {"context": build} if isinstance(build, str) else build
        dockerfile = REPO_ROOT / spec["context"] / spec.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        text = dockerfile.read_text(encoding="utf-8")
        bases = re.findall(r"^FROM\s+(?:--\S+\s+)*(\S+)", text, re.MULTILINE)
        assert bases, f"{name}: no FROM in {dockerfile}"
        assert {base: image_pin_problem(base) for base in bases} == dict.fromkeys(bases), bases
        if name == "superset":
            assert bases[-1].startswith("apache/superset:"), bases


def test_images_track_the_lock_file(services: dict[str, Doc]) -> None:
    lock = LOCK_FILE.read_text(encoding="utf-8")
    versions = dict(re.findall(r"^(pyspark|ray)==(\S+)", lock, re.MULTILINE))
    assert set(versions) == {"pyspark", "ray"}, versions
    python_minor = re.search(r'requires-python\s*=\s*">=\s*3\.(\d+)', PYPROJECT.read_text())
    assert python_minor, "requires-python lower bound not found in pyproject.toml"

    spark_tag = services["spark-master"]["image"].split(":", 1)[1]
    assert spark_tag.startswith(f"{versions['pyspark']}-scala2.13-"), spark_tag
    assert "python3" in spark_tag, spark_tag
    # The Ray client only connects to a cluster with the same Ray and Python minor version.
    ray_tag = services["ray-head"]["image"].split(":", 1)[1]
    assert ray_tag.startswith(f"{versions['ray']}-py3{python_minor.group(1)}"), ray_tag
    for group, leader in ((SPARK_WORKERS, "spark-master"), (RAY_WORKERS, "ray-head")):
        assert {services[w]["image"] for w in group} == {services[leader]["image"]}


def test_application_settings(services: dict[str, Doc]) -> None:
    for name in LAKE_SERVICES:
        env = environment(services[name])
        assert {key: env.get(key) for key in APP_ENV} == APP_ENV, name


def _interpolate_for_test(value: str | None) -> str:
    """Stand-in for Compose: ${VAR:?msg} -> a dummy secret, ${VAR:-default} -> default."""
    value = re.sub(r"\$\{[A-Za-z0-9_]+:\?[^}]*\}", "dummy-secret", value or "")
    return re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", value)


def test_app_env_matches_the_settings_model(
    services: dict[str, Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code runs against the stack by settings alone: every PERISCOPE_* variable set
    here is a real Settings field, the required ones are all there, and they parse."""
    settings_module = pytest.importorskip("periscope.settings")
    settings_cls = settings_module.Settings
    prefix = settings_cls.model_config.get("env_prefix", "")
    fields = settings_cls.model_fields
    known = {f"{prefix}{name}".upper() for name in fields}
    required = {f"{prefix}{name}".upper() for name, info in fields.items() if info.is_required()}

    for name, service in services.items():
        unknown = {key for key in environment(service) if key.startswith(prefix)} - known
        assert not unknown, f"{name}: not Settings fields: {sorted(unknown)}"
    for name in LAKE_SERVICES:
        missing = required - set(environment(services[name]))
        assert not missing, f"{name}: required settings missing: {sorted(missing)}"

    for key in [key for key in os.environ if key.upper().startswith(prefix)]:
        monkeypatch.delenv(key)
    for key, value in environment(services["ray-head"]).items():
        monkeypatch.setenv(key, _interpolate_for_test(value))
    settings = settings_cls(_env_file=None)
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.spark_master == "spark://spark-master:7077"
    assert settings.ray_address == "ray://ray-head:10001"
    assert str(settings.lake_root) == LAKE_TARGET
    assert (settings.postgres_host, settings.postgres_port) == ("postgres", 5432)


def test_published_ports_bind_to_loopback(services: dict[str, Doc]) -> None:
    for name, service in services.items():
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)


def test_other_volumes_and_bind_mounts(compose: Doc, services: dict[str, Doc]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        source
        for service in services.values()
        for kind, source, _ in mounts(service)
        if kind == "volume" and source
    }
    assert used == declared, (
        f"declared but unused: {declared - used}, undeclared: {used - declared}"
    )
    assert ("volume", "kafka-data", "/var/lib/kafka/data") in mounts(services["kafka"])
    assert environment(services["kafka"])["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert ("volume", "postgres-data", "/var/lib/postgresql/data") in mounts(services["postgres"])
    assert ("volume", "superset-home", "/app/superset_home") in mounts(services["superset"])
    for name, service in services.items():
        for kind, source, _ in mounts(service):
            if kind == "bind":
                assert source and (REPO_ROOT / source).exists(), f"{name}: {source} missing"


# --------------------------------------------------------------------------- per service


def test_kafka_is_single_node_kraft_without_auto_create(services: dict[str, Doc]) -> None:
    kafka = services["kafka"]
    env = environment(kafka)
    assert kafka["image"] == "apache/kafka:4.1.1"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in env)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 1
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    command = healthcheck_command(kafka)
    assert re.search(r"kafka-(broker-api-versions|topics)", command), command
    assert "localhost:9092" in command


def test_engine_healthchecks(services: dict[str, Doc]) -> None:
    assert "pg_isready" in healthcheck_command(services["postgres"])
    spark = healthcheck_command(services["spark-master"])
    assert "curl" in spark and ":8080" in spark, spark
    assert "ray status" in healthcheck_command(services["ray-head"])


def test_workers_join_their_leader(services: dict[str, Doc]) -> None:
    for worker in SPARK_WORKERS:
        assert "spark://spark-master:7077" in services[worker]["command"]
    for worker in RAY_WORKERS:
        assert "--address=ray-head:6379" in services[worker]["command"]


def test_postgres_database_roles_and_passwords(services: dict[str, Doc]) -> None:
    postgres = services["postgres"]
    env = environment(postgres)
    assert env["POSTGRES_DB"] == "periscope"
    assert required_variable(env["POSTGRES_PASSWORD"]) == "PERISCOPE_POSTGRES_SUPERUSER_PASSWORD"
    for variable in ("PERISCOPE_POSTGRES_OWNER_PASSWORD", "PERISCOPE_POSTGRES_BI_PASSWORD"):
        assert required_variable(env[variable]) == variable
    initdb = [src for kind, src, dst in mounts(postgres) if dst == "/docker-entrypoint-initdb.d"]
    assert len(initdb) == 1 and initdb[0].startswith("./docker/postgres/"), initdb
    scripts = "\n".join(p.read_text() for p in sorted((REPO_ROOT / initdb[0]).glob("*.sh")))
    assert "CREATE ROLE periscope" in scripts
    assert "CREATE ROLE bi_reader" in scripts


def test_superset_secret_key_comes_from_the_environment(services: dict[str, Doc]) -> None:
    assert required_variable(environment(services["superset"])["SUPERSET_SECRET_KEY"])


# --------------------------------------------------------------------------- the checks bite


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3g", 3 * GIB), ("3G", 3 * GIB), ("3072m", 3 * GIB), ("3gb", 3 * GIB), ("512k", 512 * 1024)],
)
def test_parse_memory(value: str, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["", "3x", "g", "three", "-1g", True])
def test_parse_memory_rejects_garbage(value: object) -> None:
    with pytest.raises(ValueError):
        parse_memory(value)


@pytest.mark.parametrize(
    "image",
    [
        "postgres",
        "postgres:latest",
        "postgres:",
        "rayproject/ray:nightly",
        "localhost:5000/periscope/app",
        "postgres@sha256:abc",
        "apache/kafka:${KAFKA_TAG:-4.1.1}",
        "",
        None,
    ],
)
def test_unpinned_images_are_flagged(image: object) -> None:
    assert image_pin_problem(image) is not None


@pytest.mark.parametrize(
    "image",
    ["postgres:15.10", "localhost:5000/periscope/app:1.2", "postgres@sha256:" + "a" * 64],
)
def test_pinned_images_pass(image: str) -> None:
    assert image_pin_problem(image) is None


def _broken(compose: Doc, mutate: Callable[[dict[str, Doc]], None]) -> Doc:
    broken = copy.deepcopy(compose)
    mutate(broken["services"])
    return broken


def _set(path: list[str], value: object) -> Callable[[dict[str, Doc]], None]:
    def mutate(services: dict[str, Doc]) -> None:
        node: Any = services
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _drop(path: list[str]) -> Callable[[dict[str, Doc]], None]:
    def mutate(services: dict[str, Doc]) -> None:
        node: Any = services
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


@pytest.mark.parametrize(
    ("check", "mutate"),
    [
        (limit_problems, _set(["ray-worker-3", "deploy", "resources", "limits", "memory"], "2g")),
        (limit_problems, _set(["spark-master", "deploy", "resources", "limits", "cpus"], "2")),
        (limit_problems, _drop(["kafka", "deploy"])),
        (healthcheck_problems, _drop(["superset", "healthcheck"])),
        (healthcheck_problems, _set(["kafka", "healthcheck"], {"disable": True})),
        (
            dependency_problems,
            _set(["spark-worker-2", "depends_on", "spark-master", "condition"], "service_started"),
        ),
        (dependency_problems, _drop(["ray-worker-4", "depends_on"])),
        (
            dependency_problems,
            _set(["kafka", "depends_on"], {"kafka-ui": {"condition": "service_healthy"}}),
        ),
        (network_problems, _set(["ray-head", "networks"], ["default"])),
        (secret_problems, _set(["postgres", "environment", "POSTGRES_PASSWORD"], "hunter2")),
        (secret_problems, _set(["superset", "environment"], ["SUPERSET_SECRET_KEY=${KEY:-dev}"])),
        (lake_problems, _set(["ray-worker-2", "volumes"], ["lake:/data"])),
    ],
)
def test_checks_reject_broken_copies(
    compose: Doc,
    check: Callable[[Doc], list[str]],
    mutate: Callable[[dict[str, Doc]], None],
) -> None:
    assert check(compose) == []
    assert check(_broken(compose, mutate)) != []
