from __future__ import annotations

import pytest
from pydantic import ValidationError

from periscope.settings import PROJECT_DIR, Settings, get_settings, instance_ports


def test_local_defaults_describe_one_machine():
    s = Settings()
    assert s.spark_master == "local[*]"
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.postgres_port == 5433
    assert s.lake_root == str(PROJECT_DIR / "lake")
    assert s.ray_address == ""
    assert s.jars_dir == PROJECT_DIR / ".local" / "jars"


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("PERISCOPE_SPARK_MASTER", "spark://master:7077")
    monkeypatch.setenv("PERISCOPE_LAKE_ROOT", "s3a://bucket/lake")
    monkeypatch.setenv("PERISCOPE_TOPIC_PARTITIONS", "12")
    s = get_settings()
    assert (s.spark_master, s.lake_root, s.topic_partitions) == (
        "spark://master:7077",
        "s3a://bucket/lake",
        12,
    )


def test_a_relative_local_dir_is_taken_from_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERISCOPE_LOCAL_DIR", ".local/demo")
    # PostgreSQL runs in its data directory: a relative lock-file path would not resolve there.
    assert Settings().local_dir == tmp_path / ".local" / "demo"


def test_bootstrap_servers_follow_the_local_broker_port_unless_set(monkeypatch):
    monkeypatch.setenv("PERISCOPE_KAFKA_PORT", "19092")
    assert Settings().kafka_bootstrap_servers == "127.0.0.1:19092"
    monkeypatch.setenv("PERISCOPE_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    assert Settings().kafka_bootstrap_servers == "k1:9092,k2:9092"


def test_passwords_are_required_and_never_defaulted(monkeypatch):
    monkeypatch.delenv("PERISCOPE_POSTGRES_OWNER_PASSWORD")
    with pytest.raises(ValidationError) as excinfo:
        Settings(_env_file=None)
    assert "postgres_owner_password" in str(excinfo.value)


def test_dsn_quotes_special_characters_and_picks_the_role(monkeypatch):
    monkeypatch.setenv("PERISCOPE_POSTGRES_OWNER_PASSWORD", "p@ss:w/rd")
    s = Settings()
    assert (
        s.postgres_dsn("owner") == "postgresql://periscope:p%40ss%3Aw%2Frd@127.0.0.1:5433/periscope"
    )
    assert s.postgres_dsn("bi").startswith("postgresql://bi_reader:bi-secret@")
    with pytest.raises(ValueError, match="unknown role"):
        s.postgres_dsn("admin")


def test_secrets_are_masked_when_printed():
    assert "owner-secret" not in repr(Settings())


def test_invalid_numbers_are_rejected(monkeypatch):
    monkeypatch.setenv("PERISCOPE_TOPIC_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="topic_partitions"):
        Settings()


def test_env_example_lists_every_setting():
    example = (PROJECT_DIR / ".env.example").read_text()
    for name in Settings.model_fields:
        if name == "project_dir":
            continue
        assert f"PERISCOPE_{name.upper()}=" in example, name


def test_instance_ports_shift_every_listening_port_and_name_real_settings(monkeypatch):
    from periscope.services.superset import SupersetSettings

    base, third = instance_ports(0), instance_ports(3)
    assert base["PERISCOPE_KAFKA_PORT"] == "19092"
    assert base["PERISCOPE_POSTGRES_PORT"] == "15433"
    assert {name: int(third[name]) - int(base[name]) for name in base} == dict.fromkeys(base, 3000)
    assert len(set(third.values())) == len(third)  # no two services of one instance share a port
    assert not set(base.values()) & set(third.values())
    for name, port in third.items():
        monkeypatch.setenv(name, port)
    settings, superset = Settings(), SupersetSettings()
    applied = {
        f"PERISCOPE_{field.upper()}": str(getattr(settings, field))
        for field in Settings.model_fields
        if field.endswith("_port") and f"PERISCOPE_{field.upper()}" in third
    }
    applied["PERISCOPE_SUPERSET_PORT"] = str(superset.port)
    assert applied == third  # each override is a setting the services read
    assert settings.kafka_bootstrap_servers == "127.0.0.1:22092"
    with pytest.raises(ValueError, match="0 or more"):
        instance_ports(-1)
