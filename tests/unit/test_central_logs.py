"""Central logs: the environment's CA and host certificates on the controller, the variables of
playbooks/logs.yml, and reading a host's lines back (argv and parsing; the reading itself runs on
real hosts in tests/integration/monitoring/test_central_logs.py)."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.fleet.inventory import Host
from orchestrator.monitoring.logs import (
    EVIDENCE_FILE,
    LogsError,
    journal_glob,
    journalctl_argv,
    keep_gate_evidence,
    parse_entries,
    playbook_vars,
    upload_clients,
    upload_source,
)
from orchestrator.monitoring.pki import RENEW_BEFORE, ensure_pki
from orchestrator.tools.x509 import certificate_info, key_matches, signed_by

HOSTS = [
    Host("dev-app-1", "10.213.10.10", ("app",), "10.213.10.10"),
    Host("dev-app-2", "10.213.10.11", ("app",), "10.213.10.11"),
    Host("dev-mon-1", "192.0.2.12", ("monitoring",), "10.213.10.12"),
]


@pytest.fixture
def loaded(project_copy: Path) -> LoadedEnvironment:
    return Project(project_copy).load("dev")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_pki_has_a_private_ca_and_one_certificate_per_host(loaded: LoadedEnvironment) -> None:
    pki = ensure_pki(loaded, HOSTS)
    assert pki.directory == loaded.state_dir / "pki" and mode(pki.directory) == 0o700
    assert mode(pki.ca_key) == 0o600 and mode(pki.ca_cert) == 0o644
    ca = pki.ca_cert.read_bytes()
    assert certificate_info(ca).is_ca and certificate_info(ca).common_name == "orchestrate dev logs CA"
    for host in HOSTS:
        cert = pki.host(host.name)
        assert mode(cert.key) == 0o600 and cert.issued
        pem = cert.cert.read_bytes()
        info = certificate_info(pem)
        assert info.common_name == host.name and info.client
        assert signed_by(pem, ca) and key_matches(pem, cert.key.read_bytes())
        # only the monitoring host serves, under both of its addresses
        assert info.server == (host.name == "dev-mon-1")
        assert info.ip_addresses == (("10.213.10.12", "192.0.2.12") if info.server else ())


def test_a_second_run_keeps_every_certificate(loaded: LoadedEnvironment) -> None:
    first = ensure_pki(loaded, HOSTS)
    before = {name: cert.cert.read_bytes() for name, cert in first.hosts.items()}
    ca = first.ca_cert.read_bytes()
    again = ensure_pki(loaded, HOSTS)
    assert not any(cert.issued for cert in again.hosts.values())
    assert {name: cert.cert.read_bytes() for name, cert in again.hosts.items()} == before
    assert again.ca_cert.read_bytes() == ca


def test_certificates_are_issued_again_when_they_no_longer_fit(loaded: LoadedEnvironment) -> None:
    ensure_pki(loaded, HOSTS)
    moved = [*HOSTS[:2], Host("dev-mon-1", "192.0.2.99", ("monitoring",), "10.213.10.99")]
    again = ensure_pki(loaded, moved)
    assert [name for name, cert in again.hosts.items() if cert.issued] == ["dev-mon-1"]
    assert certificate_info(again.host("dev-mon-1").cert.read_bytes()).ip_addresses == ("10.213.10.99", "192.0.2.99")
    # close to expiry: everything is renewed
    later = datetime.now(UTC) + timedelta(days=825) - RENEW_BEFORE + timedelta(days=1)
    assert all(cert.issued for cert in ensure_pki(loaded, moved, now=later).hosts.values())


def test_a_lost_ca_key_means_a_new_ca_and_new_host_certificates(loaded: LoadedEnvironment) -> None:
    first = ensure_pki(loaded, HOSTS)
    old_ca = first.ca_cert.read_bytes()
    first.ca_key.unlink()
    again = ensure_pki(loaded, HOSTS)
    assert again.ca_cert.read_bytes() != old_ca
    assert all(cert.issued for cert in again.hosts.values())
    assert all(signed_by(c.cert.read_bytes(), again.ca_cert.read_bytes()) for c in again.hosts.values())


def test_upload_sources_are_loopback_stable_and_never_journal_remotes_own() -> None:
    names = [f"dev-app-{i}" for i in range(500)]
    sources = [upload_source(n) for n in names]
    assert upload_source("dev-app-1") == upload_source("dev-app-1")
    assert all(s.startswith("127.") and not s.startswith("127.0.") for s in sources)
    assert len(set(sources)) == len(sources)


def test_two_hosts_on_one_journal_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.monitoring.logs.upload_source", lambda name: "127.1.1.1")
    with pytest.raises(LogsError, match="dev-app-1 and dev-app-2 map to the same central journal"):
        upload_clients(HOSTS)


def test_playbook_vars_point_every_host_at_the_monitoring_host(loaded: LoadedEnvironment) -> None:
    found = playbook_vars(loaded, HOSTS)
    assert found["orchestrate_logs_enabled"] is True
    # the private address: the hosts upload inside the fleet's network
    assert found["orchestrate_logs_url"] == "https://10.213.10.12:19532"
    assert found["orchestrate_logs_clients"] == [{"name": h.name, "source": upload_source(h.name)} for h in HOSTS]
    # dev's monitoring.logs: 512M and 7d, in journalctl's terms
    assert found["orchestrate_logs_max_size"] == str(512 * 1024**2)
    assert found["orchestrate_logs_max_age"] == f"{7 * 86400}s"
    assert Path(found["orchestrate_pki_dir"], "hosts", "dev-app-1.key").is_file()


def test_without_a_monitoring_host_there_are_no_central_logs_and_no_certificates(loaded: LoadedEnvironment) -> None:
    assert playbook_vars(loaded, HOSTS[:2]) == {"orchestrate_logs_enabled": False}
    assert not (loaded.state_dir / "pki").exists()


def test_central_logs_can_be_turned_off(project_copy: Path) -> None:
    env_file = project_copy / "inventories" / "dev" / "environment.yml"
    env_file.write_text(env_file.read_text().replace("    enabled: true\n    max_size: 512M",
                                                     "    enabled: false\n    max_size: 512M"))
    loaded = Project(project_copy).load("dev")
    assert playbook_vars(loaded, HOSTS) == {"orchestrate_logs_enabled": False}


def test_journalctl_reads_one_hosts_files_by_its_upload_source() -> None:
    since = datetime(2026, 12, 2, 18, 0, 0, 500000, tzinfo=UTC)
    until = since + timedelta(minutes=5)
    argv = journalctl_argv("dev-app-1", since=since, until=until)
    assert argv[:2] == ["journalctl", f"--file=/var/log/journal/remote/remote-{upload_source('dev-app-1')}[.@]*journal"]
    assert journal_glob("dev-app-1") in argv[1]
    # whole seconds that cover the window
    assert f"--since=@{int(since.timestamp())}" in argv and f"--until=@{int(until.timestamp()) + 1}" in argv
    assert "--output=json" in argv
    assert "--lines=20" in journalctl_argv("dev-app-1", lines=20)
    assert not any(a.startswith("--lines") for a in journalctl_argv("dev-app-1", since=since, lines=20))


def test_entries_become_lines_oldest_first() -> None:
    entries = [
        {"__REALTIME_TIMESTAMP": "1796237760496000", "MESSAGE": "thread 'main' (763) panicked at src/main.rs:92:9:",
         "_PID": "763", "_SYSTEMD_UNIT": "hello.service", "SYSLOG_IDENTIFIER": "hello", "PRIORITY": "3"},
        {"__REALTIME_TIMESTAMP": "1796237759000000", "MESSAGE": [104, 105, 255], "_PID": "1", "_COMM": "systemd"},
        {"MESSAGE": "no timestamp: skipped"},
    ]
    text = "\n".join(json.dumps(e) for e in entries) + "\nnot json\n"
    lines = parse_entries(text, "dev-app-1")
    assert [line.pid for line in lines] == [1, 763]
    assert lines[0].message == "hi\ufffd" and lines[0].identifier == "systemd"
    assert lines[1].format() == ("2026-12-02T18:56:00.496000+00:00 dev-app-1 hello[763]: "
                                 "thread 'main' (763) panicked at src/main.rs:92:9:")
    assert lines[1].as_dict()["unit"] == "hello.service" and lines[1].priority == 3


def test_gate_evidence_is_skipped_without_central_logs(loaded: LoadedEnvironment, tmp_path: Path) -> None:
    # no inventory, so no monitoring host: nothing is written and nothing fails
    assert keep_gate_evidence(loaded, tmp_path, ["dev-app-1"], since=datetime.now(UTC)) == []
    assert not (tmp_path / "dev-app-1" / EVIDENCE_FILE).exists()
