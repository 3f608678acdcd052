"""What ``pip install .`` gives: the commands of pyproject.toml resolve, and the package carries its data files."""

from __future__ import annotations

import importlib
import inspect
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS: dict[str, str] = PROJECT["project"]["scripts"]


def test_the_six_commands_are_declared() -> None:
    assert set(SCRIPTS) == {"payment-producer", "fraud-detector", "fraud-processor", "legit-processor", "fraud-rules", "fraud-console"}


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_each_entry_point_resolves_to_a_main_callable_without_arguments(command: str) -> None:
    module_name, _, attribute = SCRIPTS[command].partition(":")
    assert module_name.startswith("fraud_pipeline.") or module_name == "fraud_pipeline"
    main = getattr(importlib.import_module(module_name), attribute)
    assert callable(main)
    signature = inspect.signature(main)
    assert all(p.default is not inspect.Parameter.empty for p in signature.parameters.values()), signature
    assert list(signature.parameters) == ["argv"]


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_each_command_shows_its_flags(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    module_name, _, attribute = SCRIPTS[command].partition(":")
    main = getattr(importlib.import_module(module_name), attribute)
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--bootstrap-servers" in capsys.readouterr().out


def test_only_the_pipeline_is_packaged_with_its_data_files() -> None:
    setuptools = PROJECT["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["include"] == ["fraud_pipeline", "fraud_pipeline.*"]
    data = setuptools["package-data"]
    for package, patterns in data.items():
        folder = ROOT.joinpath(*package.split("."))
        assert (folder / "__init__.py").is_file(), package
        for pattern in patterns:
            assert [p for p in folder.rglob("*") if p.is_file() and fnmatch(str(p.relative_to(folder)), pattern)], pattern
    assert "sets/*.yaml" in data["fraud_pipeline.rules"] and "static/*" in data["fraud_pipeline.console"]


def test_every_pinned_requirement_is_a_dependency() -> None:
    pinned = {line.split("==")[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    declared = {spec.split(">")[0].split("<")[0].split("=")[0].strip().lower() for spec in PROJECT["project"]["dependencies"]}
    assert declared == pinned
