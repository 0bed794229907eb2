"""Where generated state lives: the one place that knows the layout under `.orchestrate/`.

    .orchestrate/                      (in the project directory, git-ignored)
      ssh/id_ed25519                   the project's SSH key, shared by its environments
      <env>/
        inventory.yml  known_hosts     written by provisioning from Terraform's outputs
        host-keys/<instance>           SSH host keys made for cloud instances (0600, in their user data)
        network.json                   a local fleet's bridge and subnet, chosen once
        terraform/                     the rendered root, plan files and plan JSON
        journal.db  audit.db           run journal and audit log
        audit.head                     the audit log's newest id and hash (truncation shows)
        lock  lock.json                the environment lock and its holder
        runs/<id>/                     ansible-runner's private data dirs
        evidence/<run id>/<host>/      what a failed health gate left behind
        artifacts/<release id>/        staged releases (a bundle's archive beside: <release id>.tar.gz)
        downloads/<sha256>/            releases fetched from a URL, kept by their sha256
        releases/<release id>/         release records: release.json, sbom.cdx.json, MANIFEST, MANIFEST.sig
        release_signing_key(.pub)      the release signing key (ed25519, created on first use, 0600)
        backups/<backup id>/           controller copies of backups
        traffic.json                   the load balancer's split (a cache of HAProxy's state)
        monitoring/                    rendered Prometheus and Alertmanager files
        pki/                           the environment's CA (its key never leaves the controller) and
                                       the hosts' certificates for central logs (keys 0600)
        heal.json  heal.token          the running heal server and its webhook token
        hosts/<name>/                  a local fleet's host overlays

Clean results of slow static checks (ansible-lint, checkov, promtool and amtool), keyed by the
content and tools they checked with (orchestrator.tools.clean_results), are kept per user in
`$XDG_CACHE_HOME/orchestrate/verify/` (default `~/.cache/...`): every checkout and copy of the
project shares them.

Modules take what they need from `EnvPaths`; none spells these names itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: the project's state directory, beside inventories/
STATE_DIR = ".orchestrate"


def state_root(project_dir: Path) -> Path:
    """`.orchestrate/` of the project (every environment's state, the SSH key, caches)."""
    return project_dir / STATE_DIR


def ssh_key(project_dir: Path) -> Path:
    """The project's private SSH key (the public one beside it, `.pub`)."""
    return state_root(project_dir) / "ssh" / "id_ed25519"


def verify_cache() -> Path:
    """Results of slow static checks, keyed by the content (and tools) they checked, for every project."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orchestrate" / "verify"


@dataclass(frozen=True)
class EnvPaths:
    """The generated state of one environment."""

    project_dir: Path
    env: str

    @property
    def root(self) -> Path:
        return state_root(self.project_dir) / self.env

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.yml"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def host_keys(self) -> Path:
        """SSH host keys the controller made for cloud instances, one pair per instance name."""
        return self.root / "host-keys"

    @property
    def network(self) -> Path:
        return self.root / "network.json"

    @property
    def terraform(self) -> Path:
        return self.root / "terraform"

    @property
    def runs(self) -> Path:
        """ansible-runner's private data dirs, one per playbook run."""
        return self.root / "runs"

    def evidence(self, run_id: str) -> Path:
        return self.root / "evidence" / run_id

    def artifact(self, release_id: str) -> Path:
        return self.artifacts / release_id

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def download(self, sha256: str) -> Path:
        return self.root / "downloads" / sha256

    @property
    def releases(self) -> Path:
        """Release records (SBOM, signed manifest), one directory per release id."""
        return self.root / "releases"

    def release(self, release_id: str) -> Path:
        return self.releases / release_id

    @property
    def signing_key(self) -> Path:
        """The environment's own release signing key (the public one beside it, `.pub`)."""
        return self.root / "release_signing_key"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def traffic(self) -> Path:
        return self.root / "traffic.json"

    @property
    def monitoring(self) -> Path:
        return self.root / "monitoring"

    @property
    def pki(self) -> Path:
        """The environment's own CA and the host certificates it signed (central logs' TLS)."""
        return self.root / "pki"

    @property
    def heal_state(self) -> Path:
        return self.root / "heal.json"

    @property
    def hosts(self) -> Path:
        return self.root / "hosts"

    @property
    def verify(self) -> Path:
        return self.root / "verify"

    @property
    def cron_log(self) -> Path:
        return self.root / "cron.log"
