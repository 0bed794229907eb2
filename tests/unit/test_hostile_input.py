"""The hostile-input corpus: every string of an environment file and every secret is either refused
at validation (ConfigError: exit 2, FILE:LINE, nothing written) or reaches where it goes byte for
byte (issue 16, "every value is data, never code").

The string fields are found by walking the schema, so a field added later is in the corpus without
anyone listing it. The values are made of Jinja delimiters, `${`/`%{`, quotes, backslashes,
newlines, NUL and other control characters, any Unicode, and very long strings; non-UTF-8 bytes
are written into the file as bytes. What "reaches where it goes" means is checked for each kind of
destination the pure code can show: the extra vars as Ansible loads them (never a template), the
EnvironmentFile as systemd reads it back, the cron line, the rendered Terraform root.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import is_trusted_as_template
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from orchestrator.config.loader import Project, load_environment_file
from orchestrator.config.schema import Environment, TerraformAws, TerraformLocal
from orchestrator.config.secrets import PASSWORD_FILE_ENV, load_secrets, secret_vars
from orchestrator.errors import ConfigError
from orchestrator.fleet.render import hcl_string, render_environment
from orchestrator.pipeline.schedule import build_entry
from orchestrator.release.hosts import role_vars
from orchestrator.tools.ansible import unsafe_yaml
from tests.support.project import REPO, copy_project
from tests.unit.roles.helpers import load_module_utils

# --- the values ------------------------------------------------------------------------------------

MARKER_PAYLOAD = "{{ lookup('pipe','touch /tmp/orch-hostile-marker') }}"

PIECES = [
    "{{", "}}", "{%", "%}", "{#", "#}", "${", "%{", "$${", "%%{", "$$", "$HOME", "'", '"', "\\", "`", ";", "%", "#",
    ": ", "- ", "!unsafe ", "&a", "*a", "\n", "\r", "\x00", "\t", "\x01", "\x1b[31m", "\x7f", "\x85", "\u2028",
    "\ufeff", " ", "é", "𝄞", "\u202e", MARKER_PAYLOAD, "{% raw %}", "x", "/", "..", "0", "a-b",
]

hostile = st.one_of(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("".join),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40),
    st.builds(lambda piece, count: piece * count, st.sampled_from(["x", "{{", "é", "${"]),
              st.integers(min_value=1000, max_value=70_000)),
)


# --- the string fields of the schema ------------------------------------------------------------------


@dataclass(frozen=True)
class StringField:
    """Where a string goes in an environment file: `path`, and whether the string is a mapping
    key there (`key`) rather than a value."""

    target: str
    path: tuple[str | int, ...]
    key: bool = False

    def __str__(self) -> str:
        return f"{self.target}:{'.'.join(map(str, self.path))}{' (key)' if self.key else ''}"


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _members(annotation: Any) -> list[Any]:
    annotation = _strip(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [_strip(a) for a in typing.get_args(annotation)]
    return [annotation]


def _walk(model: type[BaseModel], path: tuple[str | int, ...], target: str) -> Iterator[StringField]:
    for name, info in model.model_fields.items():
        here = (*path, name)
        for member in _members(info.annotation):
            origin = typing.get_origin(member)
            if member is str:
                yield StringField(target, here)
            elif isinstance(member, type) and issubclass(member, BaseModel):
                sub_target = {TerraformLocal: "local", TerraformAws: "aws"}.get(member, target)
                yield from _walk(member, here, sub_target)
            elif origin is list and _strip(typing.get_args(member)[0]) is str:
                yield StringField(target, (*here, 0))
            elif origin is dict:
                key_type, value_type = (_strip(a) for a in typing.get_args(member))
                if key_type is str:
                    yield StringField(target, (*here, "HOSTILE"), key=True)
                if str in _members(value_type):
                    yield StringField(target, (*here, "HOSTILE"))


FIELDS = sorted(set(_walk(Environment, (), "local")), key=str)


def test_the_corpus_covers_every_kind_of_string_field() -> None:
    names = {".".join(map(str, f.path)) for f in FIELDS}
    # a sample that must be there; the walk finds the rest (new fields too)
    assert {"name", "description", "service.user", "service.data_dir", "service.health.path",
            "service.config.HOSTILE", "schedule.cron", "schedule.release", "terraform.backend.key",
            "terraform.backend.region", "terraform.vars.region", "terraform.vars.tags.HOSTILE",
            "terraform.vars.subnet_cidrs.0", "healing.listen", "monitoring.retention"} <= names
    assert len(FIELDS) >= 35


# --- environment files ----------------------------------------------------------------------------


def _base(target: str) -> dict[str, Any]:
    """A valid environment file of `target` (local: bridge and subnet given, so loading writes nothing)."""
    name = "dev" if target == "local" else "prod"
    data: dict[str, Any] = yaml.safe_load((REPO / "inventories" / name / "environment.yml").read_text())
    data["schedule"] = {"cron": "0 3 * * 1-5", "release": "examples/hello-service"}
    data["terraform"]["timeouts"] = {"plan": "10m"}
    return data


def _put(data: dict[str, Any], field: StringField, value: str) -> None:
    node: Any = data
    for part in field.path[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    last = field.path[-1]
    if field.key:
        node[value] = "x"
    elif isinstance(node, list):
        node[last] = value
    else:
        node[last] = value


def _get(data: Any, field: StringField) -> Any:
    for part in field.path[:-1]:
        data = data[part]
    return data[field.path[-1]]


def _env_dir(project: Path, target: str) -> Path:
    env_dir = project / "inventories" / ("dev" if target == "local" else "prod")
    env_dir.mkdir(parents=True, exist_ok=True)
    return env_dir


def _ansible_loads(text: str) -> Any:
    """What ansible-playbook makes of `-e @FILE` holding `text` (extra vars files are trusted)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yml", encoding="ascii") as handle:
        handle.write(text)
        handle.flush()
        return DataLoader().load_from_file(handle.name, trusted_as_template=True)


def _strings(value: Any) -> Iterator[Any]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def assert_reaches_ansible_as_data(variables: dict[str, Any]) -> None:
    """The extra vars come back from Ansible's loader equal, and no string of them is a template."""
    loaded = _ansible_loads(unsafe_yaml(variables))
    assert loaded == variables
    assert not any(is_trusted_as_template(s) for s in _strings(loaded))


def _check_destinations(project: Path, loaded: Any, field: StringField, value: str) -> None:
    """Where an accepted value goes, it arrives as written."""
    env = loaded.env
    if field.path == ("release", "signing_key") and value.strip():
        # a path, read when a release is signed: a value that is no usable key is refused there, with its line
        with pytest.raises(ConfigError, match=r"environment\.yml:\d+: release\.signing_key: "):
            role_vars(loaded, None)
        assert_reaches_ansible_as_data(role_vars(loaded, None, signers=False))
        return
    assert_reaches_ansible_as_data(role_vars(loaded, None))
    if field.path[:2] == ("service", "config") and not field.key:
        envfile = load_module_utils()["rust_service_envfile"]
        text = envfile.render({"HOSTILE": value}, "# header")
        assert envfile.parse(text) == {"HOSTILE": value}
    if field.path[0] == "schedule":
        entry = build_entry(loaded)
        assert entry.file_text().count("\n") == 4  # comment, SHELL, PATH, the line: nothing more
        assert entry.expression == env.schedule.cron
        words = shlex.split(entry.command.split(" >> ")[0])
        if field.path[-1] == "release" and value == "":
            assert "--release" not in words  # an empty release: the scheduled `up` provisions only
        elif field.path[-1] == "release":
            wanted = Path(value) if Path(value).is_absolute() else project.resolve() / Path(value)
            assert words[words.index("--release") + 1] == str(wanted)
    if field.path[0] == "terraform":
        result = render_environment(loaded)
        variables = json.loads((result.terraform_dir / "terraform.tfvars.json").read_text())
        main = (result.terraform_dir / "main.tf").read_text()
        if field.path[1] == "vars" and not field.key:
            assert _get({"vars": variables}, StringField(field.target, field.path[1:])) == value
        if field.path[1] == "backend":
            assert f"{field.path[-1]:<12} = {hcl_string(value)}\n" in main


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=hostile)
def test_every_string_field_is_refused_with_its_line_or_kept_exactly(field: StringField, value: str) -> None:
    # an empty bridge or subnet is filled in by loading (a default chosen on this machine)
    assume(value or field.path[-1] not in ("bridge", "subnet"))
    data = _base(field.target)
    _put(data, field, value)
    text = yaml.safe_dump(data, sort_keys=False, width=1 << 30)  # non-ASCII escaped: PyYAML writes a raw
    # U+0085 that it then reads as a line break
    assert yaml.safe_load(text) == data  # the file says what the test means
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        env_dir = _env_dir(project, field.target)
        path = env_dir / "environment.yml"
        path.write_text(text, encoding="utf-8")
        try:
            loaded = load_environment_file(path, project)
        except ConfigError as exc:
            assert exc.line is not None and 1 <= exc.line <= text.count("\n") + 1, str(exc)
            assert str(exc).startswith(f"inventories/{env_dir.name}/environment.yml:{exc.line}: ")
            assert not (project / ".orchestrate").exists()
            return
        dumped = loaded.env.model_dump()
        if field.key:
            assert value in _get(dumped, StringField(field.target, field.path[:-1]))
        else:
            assert _get(dumped, field) == value
        _check_destinations(project, loaded, field, value)


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"caf\xe9"])
@pytest.mark.parametrize("field", ["description", "service.config.HELLO_GREETING", "schedule.release"])
def test_bytes_that_are_not_utf8_are_refused_with_their_line(tmp_path: Path, field: str, bad: bytes) -> None:
    data = _base("local")
    _put(data, StringField("local", tuple(field.split("."))), "PLACEHOLDER")
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    line = next(n for n, content in enumerate(text.splitlines(), 1) if "PLACEHOLDER" in content)
    env_dir = _env_dir(tmp_path, "local")
    (env_dir / "environment.yml").write_bytes(text.encode().replace(b"PLACEHOLDER", b"ok " + bad + b" ok"))
    with pytest.raises(ConfigError) as info:
        load_environment_file(env_dir / "environment.yml", tmp_path)
    assert info.value.line == line
    assert str(info.value).startswith(f"inventories/dev/environment.yml:{line}: not UTF-8 text: byte 0x")


# --- secrets -------------------------------------------------------------------------------------------

DEV_PASSWORD = REPO / "inventories" / "dev" / ".vault-password-dev"


@pytest.fixture(scope="module")
def dev_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("hostile") / "project")


def _write_secrets(project: Path, plaintext: bytes) -> None:
    from ansible.parsing.vault import VaultLib, VaultSecret

    password = DEV_PASSWORD.read_text().splitlines()[0]
    vault = VaultLib([("default", VaultSecret(password.encode()))])
    (project / "inventories" / "dev" / "secrets.yml").write_bytes(vault.encrypt(plaintext))


def _load_dev_secrets(project: Path) -> dict[str, str]:
    return load_secrets(Project(project).load("dev"), environ={PASSWORD_FILE_ENV: str(DEV_PASSWORD)})


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(value=hostile)
def test_every_secret_is_refused_with_its_line_or_reaches_the_env_file_exactly(dev_project: Path, value: str) -> None:
    text = yaml.safe_dump({"HELLO_SECRET": "ok", "HOSTILE": value}, width=1 << 30)
    _write_secrets(dev_project, text.encode())
    try:
        secrets = _load_dev_secrets(dev_project)
    except ConfigError as exc:
        assert str(exc).startswith("inventories/dev/secrets.yml:2: HOSTILE: "), str(exc)
        assert value not in str(exc) or len(value) < 3  # the message never shows the value
        return
    assert secrets == {"HELLO_SECRET": "ok", "HOSTILE": value}
    assert_reaches_ansible_as_data(secret_vars(secrets))
    envfile = load_module_utils()["rust_service_envfile"]
    assert envfile.parse(envfile.render(secrets, "# header")) == secrets


def test_the_issues_secret_reaches_the_env_file_exactly(dev_project: Path) -> None:
    secret = "Xy{#9k#}Q2{{ x }}$HOME"
    _write_secrets(dev_project, yaml.safe_dump({"HELLO_SECRET": secret, "MARKER": MARKER_PAYLOAD}).encode())
    secrets = _load_dev_secrets(dev_project)
    assert secrets == {"HELLO_SECRET": secret, "MARKER": MARKER_PAYLOAD}
    assert_reaches_ansible_as_data(secret_vars(secrets))


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3(", b"caf\xe9"])
def test_decrypted_secrets_that_are_not_utf8_are_refused_with_their_line(dev_project: Path, bad: bytes) -> None:
    _write_secrets(dev_project, b"HELLO_SECRET: ok\nOTHER: ok\nBAD: x" + bad + b"\n")
    with pytest.raises(ConfigError) as info:
        _load_dev_secrets(dev_project)
    assert str(info.value).startswith("inventories/dev/secrets.yml:3: the decrypted secrets are not UTF-8 text: ")


@pytest.mark.parametrize("text", [b"A: ok\nB: \"x\\0y\"\n", b"A: ok\nB: \"x\\ny\"\n", b"A: ok\nB: x\x01y\n"])
def test_secrets_with_nul_newline_or_raw_control_characters_are_refused_with_their_line(
        dev_project: Path, text: bytes) -> None:
    _write_secrets(dev_project, text)
    with pytest.raises(ConfigError) as info:
        _load_dev_secrets(dev_project)
    assert str(info.value).startswith("inventories/dev/secrets.yml:2: ")


# --- HCL strings ------------------------------------------------------------------------------------


def hcl_unquote(quoted: str) -> str:
    """What Terraform reads from an HCL quoted string without interpolations (hclsyntax spec:
    template literals, escapes `\\n \\r \\t \\" \\\\ \\uNNNN`, `$${` and `%%{`); AssertionError for a
    string that would interpolate or does not parse."""
    assert quoted[0] == quoted[-1] == '"' and len(quoted) >= 2
    body, out, i = quoted[1:-1], [], 0
    simple = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
    while i < len(body):
        if body[i] == "\\":
            escape = body[i + 1]
            if escape == "u":
                out.append(chr(int(body[i + 2:i + 6], 16)))
                i += 6
                continue
            assert escape in simple, f"unknown escape \\{escape}"
            out.append(simple[escape])
            i += 2
        elif body.startswith(("$${", "%%{"), i):
            out.append(body[i + 1:i + 3])
            i += 3
        else:
            assert not body.startswith(("${", "%{"), i), f"{quoted!r} interpolates at {i}"
            assert body[i] != '"' and body[i] not in "\n\r", f"{quoted!r} ends the string at {i}"
            out.append(body[i])
            i += 1
    return "".join(out)


HCL_PIECES = ["$", "%", "{", "}", "$${", "\\", '"', "\n", "x"]


@given(st.one_of(st.text(alphabet=st.characters(exclude_categories=("Cs",))),
                 st.lists(st.sampled_from(HCL_PIECES), max_size=12).map("".join)))
def test_hcl_strings_read_back_exactly(value: str) -> None:
    assert hcl_unquote(hcl_string(value)) == value
