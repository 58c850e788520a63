"""The layout the architecture fixes: stage packages, one-way imports, pinned JVM parts."""

from __future__ import annotations

import ast
import importlib
import re
from importlib.metadata import version
from pathlib import Path

import pytest

from periscope.settings import PROJECT_DIR

STAGES = ("ingest", "spark_streaming", "ml", "warehouse", "serving")


@pytest.mark.parametrize("package", ("periscope", *STAGES))
def test_every_stage_package_imports_and_says_what_it_is(package):
    module = importlib.import_module(package)
    assert module.__doc__ and len(module.__doc__.strip()) > 20


def _imported_packages(path: Path) -> list[str]:
    """Top-level packages a module imports anywhere (module level or inside functions).

    Relative imports (`from . import x`) stay inside the module's own package and are skipped.
    """
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _foreign_imports(package: str, allowed: set[str]) -> list[str]:
    offenders = []
    for path in sorted((PROJECT_DIR / package).rglob("*.py")):
        for name in _imported_packages(path):
            top = name.split(".")[0]
            if top in ("periscope", *STAGES) and top not in allowed:
                offenders.append(f"{path.relative_to(PROJECT_DIR)}: imports {name}")
    return offenders


def test_periscope_imports_no_stage():
    assert _foreign_imports("periscope", {"periscope"}) == []


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage):
    """Stages share code only through `periscope/` (ARCHITECTURE.md: imports flow one way)."""
    assert _foreign_imports(stage, {"periscope", stage}) == []


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
