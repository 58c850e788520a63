"""The layout the architecture fixes: stage packages, one-way imports, pinned JVM parts."""

from __future__ import annotations

import ast
import importlib
import re
from importlib.metadata import version
from pathlib import Path

import pytest

from periscope.settings import PROJECT_DIR

STAGES = ("ingest", "spark_streaming", "ml", "warehouse")


@pytest.mark.parametrize("package", ("periscope", *STAGES))
def test_every_stage_package_imports_and_says_what_it_is(package):
    module = importlib.import_module(package)
    assert module.__doc__ and len(module.__doc__.strip()) > 20


def test_periscope_imports_no_stage():
    offenders = []
    for path in (PROJECT_DIR / "periscope").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in STAGES]
    assert offenders == []


@pytest.mark.parametrize("layer", ("bronze", "silver", "gold"))
def test_lake_layers_exist_with_a_readme(layer):
    assert (PROJECT_DIR / "lake" / layer / "README.md").is_file()


def _pom_property(pom: Path, name: str) -> str:
    match = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", pom.read_text())
    assert match, f"{name} missing from {pom}"
    return match.group(1)


def test_spark_jars_match_the_python_packages():
    pom = PROJECT_DIR / "jvm" / "spark" / "pom.xml"
    assert _pom_property(pom, "spark.version") == version("pyspark")
    assert _pom_property(pom, "delta.version") == version("delta-spark")


def test_fetched_jars_match_the_poms():
    """After `make setup`, the jar folder holds exactly the pinned versions."""
    from periscope.settings import Settings

    jars = Settings().jars_dir
    spark_jars = {p.name for p in (jars / "spark").glob("*.jar")}
    spark = _pom_property(PROJECT_DIR / "jvm/spark/pom.xml", "spark.version")
    delta = _pom_property(PROJECT_DIR / "jvm/spark/pom.xml", "delta.version")
    assert f"spark-sql-kafka-0-10_2.13-{spark}.jar" in spark_jars
    assert f"delta-spark_2.13-{delta}.jar" in spark_jars
    assert f"delta-storage-{delta}.jar" in spark_jars
    kafka = _pom_property(PROJECT_DIR / "jvm/kafka-broker/pom.xml", "kafka.version")
    assert (jars / "kafka" / f"kafka_2.13-{kafka}.jar").is_file()
