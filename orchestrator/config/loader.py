"""Environment files: load, validate into typed objects, and report errors by file:line.

An environment lives in `inventories/<name>/environment.yml`. Loading keeps the line of every
key so that a validation error names the file, the line, the field path and what was expected:

    inventories/prod/environment.yml:12: rollout.strategy: 'bluegreen' is not one of rolling, canary,
        canary-hosts, canary-traffic, blue-green
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from orchestrator.config.schema import HOST_CANARY_STRATEGIES, TRAFFIC_ONLY_STRATEGIES, Environment, TerraformLocal
from orchestrator.config.types import default_bridge_name, parse_duration
from orchestrator.errors import ConfigError, UsageError
from orchestrator.paths import EnvPaths

ENVIRONMENT_FILE = "environment.yml"


INVENTORIES_DIR = "inventories"


"""A Prometheus-style duration string (`500ms`, `30s`, `5m`, `1h30m`); a bare integer is seconds."""


Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedEnvironment:
    """A validated environment with where it came from."""

    env: Environment
    path: Path
    project_dir: Path
    lines: dict[Path_, int]

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def paths(self) -> EnvPaths:
        """Where this environment's generated state lives (orchestrator.paths)."""
        return EnvPaths(self.project_dir, self.env.name)

    @property
    def state_dir(self) -> Path:
        """Generated state for this environment: .orchestrate/<env>/."""
        return self.paths.root

    def line_of(self, *field: str | int) -> int | None:
        return _line_for(self.lines, field)

    def with_local_network(self, bridge: str, subnet: str) -> LoadedEnvironment:
        """This environment with a local fleet's `terraform.vars.bridge`/`subnet` set (pure)."""
        terraform = self.env.terraform
        if not isinstance(terraform, TerraformLocal):
            return self
        fleet_vars = terraform.vars.model_copy(update={"bridge": bridge, "subnet": subnet})
        env = self.env.model_copy(update={"terraform": terraform.model_copy(update={"vars": fleet_vars})})
        return replace(self, env=env)


def missing_subnet(loaded: LoadedEnvironment) -> UsageError:
    """The error of a local fleet used before it has a subnet (none in the file, none chosen yet)."""
    return UsageError(
        f"{loaded.name}: the local fleet has no subnet yet (terraform.vars.subnet is not set in "
        f"{_display_path(loaded.path, loaded.project_dir)} and none was chosen in {loaded.paths.network}): "
        f"run `orchestrate render {loaded.name}` or `orchestrate provision {loaded.name}`, or set it")


def _compose_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int], display: str) -> None:
    """Record the line of every mapping key and sequence item; reject duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            dotted = ".".join(str(p) for p in (*path, key))
            if key in seen:
                raise ConfigError(f"duplicate key {key!r}", path=display, line=line, field=dotted)
            seen.add(key)
            lines[(*path, key)] = line
            _compose_lines(value_node, (*path, key), lines, display)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _compose_lines(item, (*path, index), lines, display)


def _line_for(lines: dict[Path_, int], loc: tuple[Any, ...]) -> int | None:
    """Line of the deepest prefix of `loc` that appears in the file."""
    for end in range(len(loc), 0, -1):
        found = lines.get(tuple(loc[:end]))
        if found is not None:
            return found
    return None


def _describe(error: Any) -> tuple[tuple[Any, ...], str]:
    """Field location and an actionable message for one pydantic error."""
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in {"local_fleet", "aws_fleet"}))
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "unknown_key":
        return (*loc, ctx["key"]), error["msg"]
    if kind == "duration":
        return loc, str(error["msg"])
    if kind == "missing":
        return loc, "required field is missing"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return loc, f"{value!r} is not one of {', '.join(choices)}"
    if kind in {"union_tag_invalid", "union_tag_not_found"}:
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        tag = ctx.get("tag")
        field = (*loc, ctx.get("discriminator", "").strip("'"))
        if kind == "union_tag_not_found":
            return field, f"required field is missing (one of {', '.join(choices)})"
        return field, f"{tag!r} is not one of {', '.join(choices)}"
    if kind == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        return loc, message
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return loc, f"expected an integer, got {value!r}"
    if kind in {"bool_type", "bool_parsing"}:
        return loc, f"expected true or false, got {value!r}"
    if kind in {"string_type"}:
        return loc, f"expected a string, got {value!r}"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return loc, f"expected a mapping, got {type(value).__name__ if value is not None else 'nothing'}"
    if kind in {"list_type"}:
        return loc, f"expected a list, got {value!r}"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        bound = {
            "greater_than_equal": f"at least {ctx.get('ge')}",
            "less_than_equal": f"at most {ctx.get('le')}",
            "greater_than": f"greater than {ctx.get('gt')}",
            "less_than": f"less than {ctx.get('lt')}",
        }[kind]
        return loc, f"{value!r} must be {bound}"
    return loc, f"{error['msg']} (got {value!r})"


def _display_path(path: Path, project_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(project_dir.resolve()))
    except ValueError:
        return str(path)


def _line_at(text: str, offset: int) -> int:
    """The 1-based line of character `offset` of `text`."""
    return text.count("\n", 0, max(offset, 0)) + 1


def decode_utf8(raw: bytes, display: str, *, what: str = "") -> str:
    """`raw` as UTF-8 text; a ConfigError naming the line and column of the first bad byte otherwise
    (`what` prefixes the message, e.g. "decrypted secrets are ")."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"{what}not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {column} ({exc.reason})",
                          path=display, line=line) from None


def _parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data of one YAML document, parsed once."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return node, loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def load_environment_file(path: Path, project_dir: Path) -> LoadedEnvironment:
    """Load and validate one environment file; raise ConfigError naming file:line: field."""
    display = _display_path(path, project_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", path=display) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=display) from None
    text = decode_utf8(raw, display)
    try:
        node, data = _parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"YAML syntax error: {problem}", path=display, line=line) from None
    except yaml.reader.ReaderError as exc:
        # a control character written as itself (not as a "\x.." escape): YAML refuses it
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise ConfigError(f"character U+{code:04X} is not allowed in YAML (write it as an escape in a "
                          "double-quoted string if it is meant)", path=display,
                          line=_line_at(text, exc.position)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", path=display) from None
    if node is None or data is None:
        raise ConfigError(
            "file is empty; expected a mapping with name, target, terraform, service", path=display, line=1
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping at the top level, got {type(data).__name__}", path=display, line=1
        )
    lines: dict[Path_, int] = {}
    _compose_lines(node, (), lines, display)
    try:
        env = Environment.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc, message = _describe(error)
            item = re.match(r"\[(\d+)\]: ", message)  # a list item's problem: point at the item's line
            if item and (*loc, int(item.group(1))) in lines:
                loc = (*loc, int(item.group(1)))
                message = message[item.end():]
            line = _line_for(lines, loc) or 1
            problems.append((line, ".".join(str(p) for p in loc), message))
        problems.sort(key=lambda p: p[0])
        line, field, message = problems[0]
        extra = problems[1:]
        hint = "\n".join(f"{display}:{ln}: {fd}: {msg}" for ln, fd, msg in extra) or None
        raise ConfigError(message, path=display, line=line, field=field or None, hint=hint) from None
    loaded = LoadedEnvironment(env=env, path=path, project_dir=project_dir, lines=lines)
    _check_semantics(loaded, display, path.parent.name)
    return _with_network_defaults(loaded)


def _with_network_defaults(loaded: LoadedEnvironment) -> LoadedEnvironment:
    """`loaded` with a local fleet's bridge and subnet filled in where the file leaves them out.

    Pure: the bridge name derives from host_prefix; the subnet is the one kept in
    .orchestrate/ENV/network.json, when the fleet was rendered or provisioned before (choosing
    one reads the machine's routes and writes that file: orchestrator.fleet.local.network.
    ensure_network does it where the fleet is rendered, provisioned or booted). Without that file
    the subnet stays empty. Every consumer then reads the same `terraform.vars.bridge`/`subnet`.
    """
    terraform = loaded.env.terraform
    if not isinstance(terraform, TerraformLocal) or (terraform.vars.bridge and terraform.vars.subnet):
        return loaded
    v = terraform.vars
    return loaded.with_local_network(v.bridge or default_bridge_name(v.host_prefix),
                                     v.subnet or kept_subnet(loaded.paths.network))


def kept_subnet(path: Path) -> str:
    """The subnet recorded in a network.json (`{"subnet": "10.213.7.0/24", ...}`); "" when there is
    none or it is not an IPv4 network. Only reads."""
    try:
        return str(ipaddress.IPv4Network(str(json.loads(path.read_text(encoding="utf-8"))["subnet"]), strict=True))
    except (OSError, ValueError, TypeError, KeyError):
        return ""


def _check_semantics(loaded: LoadedEnvironment, display: str, dir_name: str) -> None:
    """Rules that span several fields; each error points at the field to change."""
    env = loaded.env

    def fail(message: str, *field: str) -> None:
        raise ConfigError(message, path=display, line=loaded.line_of(*field) or 1, field=".".join(field))

    if env.name != dir_name:
        fail(f"{env.name!r} does not match its directory {dir_name!r}", "name")
    if env.target == "local" and env.terraform.module != "local_fleet":
        fail("target 'local' needs terraform.module 'local_fleet'", "terraform", "module")
    if env.target == "aws" and env.terraform.module != "aws_fleet":
        fail("target 'aws' needs terraform.module 'aws_fleet'", "terraform", "module")
    app_count = env.terraform.vars.app_count
    if env.rollout.strategy in HOST_CANARY_STRATEGIES and env.rollout.canary_hosts >= app_count:
        fail(
            f"{env.rollout.canary_hosts} canary hosts leave none of the {app_count} app hosts for the rest",
            "rollout",
            "canary_hosts",
        )
    if env.rollout.strategy in TRAFFIC_ONLY_STRATEGIES:
        # the traffic strategies move weights on the LB between two colours of app hosts
        if env.terraform.vars.lb_count < 1:
            fail(f"{env.rollout.strategy} moves traffic on a load balancer: set terraform.vars.lb_count: 1 "
                 "(or use rolling, canary, canary-hosts)", "rollout", "strategy")
        if app_count < 2:
            fail(f"{env.rollout.strategy} needs at least 2 app hosts (two colours); terraform.vars.app_count is "
                 f"{app_count}", "rollout", "strategy")
    if env.rollout.canary_load > 0 and env.target != "local":
        # the load generator reaches only loopback and the project's own bridge; cloud load
        # balancers get their traffic from users
        fail(f"synthetic canary load is for local environments (target is {env.target!r}): set it to 0 "
             "and let real traffic judge the canary", "rollout", "canary_load")
    if isinstance(env.rollout.batch_size, int) and env.rollout.batch_size > app_count:
        fail(f"{env.rollout.batch_size} is more than the {app_count} app hosts", "rollout", "batch_size")
    if isinstance(env.terraform, TerraformLocal) and env.terraform.vars.subnet:
        net = ipaddress.IPv4Network(env.terraform.vars.subnet)
        needed = env.terraform.vars.app_count + env.terraform.vars.monitoring_count + env.terraform.vars.lb_count
        if net.num_addresses - 3 < needed:
            fail(f"{env.terraform.vars.subnet} has room for fewer than {needed} hosts", "terraform", "vars", "subnet")
    if env.healing.enabled and not env.monitoring.enabled:
        fail("healing needs monitoring.enabled: true", "healing", "enabled")
    if env.healing.enabled and parse_duration(env.healing.throttle) < parse_duration(env.monitoring.alert_for):
        fail(
            f"{env.healing.throttle} is shorter than monitoring.alert_for ({env.monitoring.alert_for})",
            "healing",
            "throttle",
        )


@dataclass(frozen=True)
class Project:
    """A project directory: inventories/, roles/, playbooks/, terraform/ and .orchestrate/."""

    root: Path

    @property
    def inventories(self) -> Path:
        return self.root / INVENTORIES_DIR

    def environment_names(self) -> list[str]:
        """Names of the environments that have an environment file, sorted."""
        if not self.inventories.is_dir():
            return []
        return sorted(p.parent.name for p in self.inventories.glob(f"*/{ENVIRONMENT_FILE}"))

    def environment_path(self, name: str) -> Path:
        return self.inventories / name / ENVIRONMENT_FILE

    def load(self, name: str) -> LoadedEnvironment:
        """Load environment `name`; an unknown name is a UsageError listing the known ones."""
        known = self.environment_names()
        if name not in known:
            listing = ", ".join(known) if known else f"none (no {INVENTORIES_DIR}/*/{ENVIRONMENT_FILE} in {self.root})"
            raise UsageError(f"unknown environment {name!r}; known environments: {listing}")
        return load_environment_file(self.environment_path(name), self.root)

    def iter_environments(self) -> Iterator[LoadedEnvironment]:
        for name in self.environment_names():
            yield self.load(name)
