"""`orchestrate release show ENV RELEASE_ID`: a recorded release, its signature and its SBOM's crates."""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.errors import UsageError
from orchestrator.ids import is_release_id
from orchestrator.release.sbom import crates_in_sbom
from orchestrator.release.signing import require_record


@click.group("release")
def command() -> None:
    """Releases recorded on the controller (.orchestrate/ENV/releases/)."""


@command.command("show")
@env_argument
@click.argument("release_id", metavar="RELEASE_ID")
@verb
def show(app: AppContext, env_name: str, release_id: str) -> None:
    """Show release RELEASE_ID of ENV: version, source, files and their sha256, who signed its
    manifest, and the crates its CycloneDX SBOM lists (releases built from a cargo project)."""
    loaded = app.load(env_name)
    if not is_release_id(release_id):
        raise UsageError(f"{release_id!r} is not a release id such as 0.2.0-0123456789ab")
    record = require_record(loaded, release_id)
    sbom = record.sbom
    crates = crates_in_sbom(sbom.read_text(encoding="utf-8")) if sbom is not None and sbom.is_file() else None
    data = record.data

    def human() -> None:
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold")
        facts.add_column()
        facts.add_row("release", f"{record.id} of {env_name}")
        facts.add_row("version", str(data.get("version")))
        facts.add_row("source", str(data.get("source")))
        facts.add_row("sealed", str(data.get("sealed")))
        for path, digest in record.files.items():
            facts.add_row("file", f"{path}  sha256 {digest}")
        facts.add_row("signed by", f"{data.get('signer_fingerprint')} ({data.get('signer')})")
        facts.add_row("sbom", f"{sbom} (sha256 {data.get('sbom_sha256')})" if sbom is not None else
                      "none (the release was not built from a cargo project)")
        app.stdout_print(facts)
        if crates is None:
            return
        table = Table("crate", "version", "source", "sha256 (Cargo.lock)", title="crates (CycloneDX SBOM)",
                      title_justify="left", box=None)
        for crate in crates:
            name = f"{crate['name']} (this release)" if crate["root"] else str(crate["name"])
            table.add_row(name, str(crate["version"]), str(crate["source"] or "-"), str(crate["sha256"] or "-"))
        app.stdout_print(table)

    app.emit({"env": env_name, "release": record.as_dict(), "manifest": record.manifest,
              "crates": crates}, human)
