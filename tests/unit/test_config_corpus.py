"""Every malformed environment file gets one exact, actionable line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli

CORPUS = sorted((Path(__file__).parent / "config_corpus").glob("*.yml"))


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("case", CORPUS, ids=[c.stem for c in CORPUS])
def test_malformed_environment_file(case: Path, tmp_path: Path) -> None:
    text = case.read_text()
    first = text.splitlines()[0]
    assert first.startswith("# expect: "), f"{case.name} must start with '# expect: <message>'"
    expected = first.removeprefix("# expect: ")
    env_dir = tmp_path / "inventories" / "corpus"
    env_dir.mkdir(parents=True)
    (env_dir / "environment.yml").write_text(text)

    result = CliRunner().invoke(cli, ["--project-dir", str(tmp_path), "validate", "corpus"])

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[0] == f"error: {expected}"
    assert "Traceback" not in result.output
    # the location prefix is FILE:LINE
    assert expected.startswith("inventories/corpus/environment.yml:")
    line = int(expected.split(":")[1])
    assert 1 <= line <= max(1, len(text.splitlines()))


@pytest.mark.parametrize("case", CORPUS[:3], ids=[c.stem for c in CORPUS[:3]])
def test_malformed_environment_file_json(case: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "inventories" / "corpus"
    env_dir.mkdir(parents=True)
    (env_dir / "environment.yml").write_text(case.read_text())
    result = CliRunner().invoke(cli, ["--project-dir", str(tmp_path), "validate", "corpus", "--json"])
    assert result.exit_code == 2
    import json

    payload = json.loads(result.stdout)
    assert payload["exit_code"] == 2
    assert payload["error"].startswith("inventories/corpus/environment.yml:")
