"""Environment files: load, validate into typed objects, and report errors by file:line.

An environment lives in `inventories/<name>/environment.yml`. Loading keeps the line of every
key so that a validation error names the file, the line, the field path and what was expected:

    inventories/prod/environment.yml:12: rollout.strategy: 'bluegreen' is not one of rolling, canary,
        canary-hosts, canary-traffic, blue-green
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.errors import ConfigError, UsageError
from orchestrator.paths import EnvPaths

ENVIRONMENT_FILE = "environment.yml"
INVENTORIES_DIR = "inventories"

_DURATION_RE = re.compile(r"^(?:(\d+)(ms|s|m|h|d|w))+$")
_DURATION_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ENV_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
_ENV_VAR_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_HOST_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_BRIDGE_RE = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
_CRON_FIELD_RE = re.compile(r"^[\d*/,\-A-Za-z]+$")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration such as `90s`, `5m` or `1h30m`."""
    if not _DURATION_RE.match(text):
        raise ValueError(f"{text!r} is not a duration such as 500ms, 30s, 5m, 1h")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART_RE.findall(text))


def _escape(message: str) -> str:
    """Protect literal braces from pydantic's message templating."""
    return message.replace("{", "{{").replace("}", "}}")


def _duration(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PydanticCustomError("duration", "expected a duration such as 500ms, 30s, 5m, 1h")
    text = f"{value}s" if isinstance(value, int) else value.strip()
    if not _DURATION_RE.match(text):
        raise PydanticCustomError(
            "duration", _escape(f"{value!r} is not a duration such as 500ms, 30s, 5m, 1h"), {"value": value}
        )
    return text


Duration = Annotated[str, BeforeValidator(_duration)]
"""A Prometheus-style duration string (`500ms`, `30s`, `5m`, `1h30m`); a bare integer is seconds."""


class _Model(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        # pydantic's own extra="forbid" message does not list the valid keys; operators
        # need them, so unknown keys are reported here with the list.
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_key",
                        _escape(f"unknown key {str(key)!r} (valid keys: {', '.join(cls.model_fields)})"),
                        {"key": str(key)},
                    )
        return data


# --- terraform ---------------------------------------------------------------------------


class LocalFleetVars(_Model):
    """Inputs of terraform/modules/local_fleet."""

    host_prefix: str = Field(description="prefix of every host name, unique per fleet")
    app_count: int = Field(default=3, ge=1, le=64)
    monitoring_count: int = Field(default=1, ge=0, le=1)
    lb_count: int = Field(default=0, ge=0, le=1)
    bridge: str = Field(
        default="",
        description="name of the bridge the project owns (at most 15 chars); empty or absent: derived from "
        "host_prefix (orchestrator.hosts.local.default_bridge_name)",
    )
    subnet: str = Field(
        default="",
        description="IPv4 subnet of the bridge, /16 to /28; empty or absent: a free /24 of 10.213.0.0/16, "
        "chosen once and kept in .orchestrate/ENV/network.json (orchestrator.hosts.local.resolve_network)",
    )

    @field_validator("host_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _HOST_PREFIX_RE.match(value):
            raise ValueError(f"{value!r}: expected lowercase letters, digits and '-', starting with a letter, max 20")
        return value

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, value: str) -> str:
        if value and not _BRIDGE_RE.match(value):
            raise ValueError(f"{value!r}: expected lowercase letters, digits and '-', starting with a letter, max 15")
        return value

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        if not value:
            return value
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 network such as 10.213.10.0/24 ({exc})") from None
        if not net.is_private or not 16 <= net.prefixlen <= 28:
            raise ValueError(f"{value!r} must be a private IPv4 network between /16 and /28")
        return value


class AwsFleetVars(_Model):
    """Inputs of terraform/modules/aws_fleet."""

    name: str = Field(description="name prefix and Name tag of every resource")
    region: str = "eu-west-1"
    vpc_cidr: str = "10.40.0.0/16"
    subnet_cidrs: list[str] = Field(default_factory=lambda: ["10.40.1.0/24"], min_length=1)
    admin_cidr: str = Field(description="CIDR allowed to reach SSH")
    app_count: int = Field(default=3, ge=1, le=200)
    instance_type: str = "t3.micro"
    monitoring_instance_type: str = "t3.small"
    ami_id: str = Field(description="AMI of a systemd Linux with python3 (Debian 12)")
    lb_count: int = Field(default=0, ge=0, le=1, description="HAProxy load-balancer instances (0 or 1)")
    lb_instance_type: str = "t3.small"
    lb_ingress_cidrs: list[str] = Field(default_factory=lambda: ["0.0.0.0/0"], min_length=1)
    service_port: int = Field(default=8080, ge=1, le=65535)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("vpc_cidr", "admin_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 CIDR ({exc})") from None
        return value

    @field_validator("ami_id")
    @classmethod
    def _ami(cls, value: str) -> str:
        if not re.match(r"^ami-[0-9a-f]{8,17}$", value):
            raise ValueError(f"{value!r} is not an AMI id such as ami-0123456789abcdef0")
        return value


class LocalBackend(_Model):
    """Terraform state on the controller under .orchestrate/<env>/terraform/."""

    type: Literal["local"] = "local"


class S3Backend(_Model):
    """Terraform state in S3 with S3-native locking (use_lockfile)."""

    type: Literal["s3"]
    bucket: str
    key: str = "orchestrate/terraform.tfstate"
    region: str = "eu-west-1"

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", value):
            raise ValueError(f"{value!r} is not a valid S3 bucket name")
        return value


class TerraformTimeouts(_Model):
    """How long each kind of terraform command may run before it is stopped (unset: the default).

    Defaults (orchestrator.tools.terraform.Timeouts): init 5m, plan 15m, apply 1h, destroy 1h,
    output 2m, show 5m.
    """

    init: Duration | None = None
    plan: Duration | None = None
    apply: Duration | None = None
    destroy: Duration | None = None
    output: Duration | None = None
    show: Duration | None = None

    @field_validator("*")
    @classmethod
    def _positive(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) <= 0:
            raise ValueError(f"{value!r} must be longer than 0s")
        return value

    def seconds(self) -> dict[str, float]:
        """The timeouts that are set, in seconds, by command."""
        return {name: parse_duration(value) for name, value in self.model_dump().items() if value is not None}


class TerraformLocal(_Model):
    module: Literal["local_fleet"]
    backend: LocalBackend = Field(default_factory=LocalBackend)
    vars: LocalFleetVars
    timeouts: TerraformTimeouts = Field(default_factory=TerraformTimeouts)


class TerraformAws(_Model):
    module: Literal["aws_fleet"]
    backend: S3Backend
    vars: AwsFleetVars
    timeouts: TerraformTimeouts = Field(default_factory=TerraformTimeouts)


# --- service -----------------------------------------------------------------------------


class HealthCheck(_Model):
    path: str = "/healthz"
    timeout: Duration = Field(default="10s", description="how long a new release may take to become healthy")
    interval: Duration = "250ms"

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        return value


class Service(_Model):
    name: str
    port: int = Field(default=8080, ge=1, le=65535)
    user: str = ""
    health: HealthCheck = Field(default_factory=HealthCheck)
    keep_releases: int = Field(default=5, ge=2, le=100)
    data_dir: str = ""
    config: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SERVICE_NAME_RE.match(value):
            raise ValueError(f"{value!r}: expected lowercase letters, digits and '-', starting with a letter")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"{value!r} must be an absolute path")
        return value

    @field_validator("config")
    @classmethod
    def _config(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not _ENV_VAR_RE.match(key):
                raise ValueError(f"{key!r} is not an environment variable name (A-Z, 0-9, _)")
        return value

    @property
    def effective_user(self) -> str:
        return self.user or self.name

    @property
    def effective_data_dir(self) -> str:
        return self.data_dir or f"/var/lib/{self.name}"


# --- rollout, monitoring, healing, schedule ----------------------------------------------


#: rollout.strategy and `deploy --strategy`: rolling and canary-hosts deploy host by host (batches,
#: canary hosts first); blue-green and canary-traffic move traffic on the load balancer; `canary` is
#: canary-traffic when the environment has a load-balancer host, else canary-hosts
#: (orchestrator.traffic.resolve_strategy)
RolloutStrategy = Literal["rolling", "canary", "canary-hosts", "canary-traffic", "blue-green"]
HOST_CANARY_STRATEGIES = ("canary", "canary-hosts")
TRAFFIC_ONLY_STRATEGIES = ("blue-green", "canary-traffic")


class Rollout(_Model):
    strategy: RolloutStrategy = "rolling"
    batch_size: int | str = Field(default="34%", description="hosts per batch: a count or a percentage")
    max_fail_percentage: int = Field(default=0, ge=0, le=100)
    canary_hosts: int = Field(default=1, ge=1)
    traffic_steps: list[int] = Field(
        default_factory=lambda: [10, 25, 50, 75, 100],
        description="canary-traffic: percentages of the traffic the new colour gets, rising, ending at 100")
    step_hold: Duration = Field(default="10s", description="canary-traffic: how long each step runs before its gate")
    max_error_ratio: float = Field(default=0.01, ge=0, lt=1,
                                   description="traffic gates: largest share of failed requests on the new colour")
    max_latency: Duration = Field(default="500ms",
                                  description="traffic gates: largest mean response time of the new colour")
    canary_load: float = Field(
        default=0, ge=0, le=500,
        description="canary-traffic: requests per second of bounded synthetic load sent through the load "
                    "balancer while the steps run, for environments without real traffic (0: real traffic only)")

    @field_validator("traffic_steps")
    @classmethod
    def _steps(cls, value: list[int]) -> list[int]:
        if not value or value[-1] != 100 or any(not 1 <= s <= 100 for s in value) or value != sorted(set(value)):
            raise ValueError(f"{value!r} is not a rising list of percentages ending at 100, such as [10, 50, 100]")
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch(cls, value: object) -> int | str:
        if isinstance(value, bool):
            raise ValueError("expected a count such as 2 or a percentage such as 25%")
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"{value} must be at least 1")
            return value
        if isinstance(value, str):
            match = re.fullmatch(r"(\d{1,3})%", value.strip())
            if match and 1 <= int(match.group(1)) <= 100:
                return value.strip()
        raise ValueError(f"{value!r} is not a count such as 2 or a percentage between 1% and 100%")

    @property
    def host_strategy(self) -> Literal["rolling", "canary"]:
        """The host-level strategy orchestrator.deploy runs for this setting when asked for none.

        canary and canary-hosts: canary hosts first. The traffic strategies deploy each colour as
        a rolling deploy (orchestrator.traffic); the entry points that may move traffic (deploy,
        up) resolve `canary` against the inventory first (orchestrator.traffic.resolve_strategy).
        """
        return "canary" if self.strategy in HOST_CANARY_STRATEGIES else "rolling"


class Monitoring(_Model):
    enabled: bool = True
    scrape_interval: Duration = "15s"
    evaluation_interval: Duration = "15s"
    alert_for: Duration = "30s"
    error_ratio_threshold: float = Field(default=0.05, gt=0, lt=1)
    retention: Duration = "7d"


class Healing(_Model):
    enabled: bool = True
    listen: str = "127.0.0.1:9095"
    throttle: Duration = "5m"
    max_remediations: int = Field(default=3, ge=1)
    window: Duration = "1h"
    on_lock: Literal["wait", "skip"] = "wait"
    lock_wait: Duration = "2m"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT such as 127.0.0.1:9095")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
        return value


class Schedule(_Model):
    cron: str
    release: str = ""

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        fields = value.split()
        if value.startswith("@"):
            if value not in {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@reboot"}:
                raise ValueError(f"{value!r} is not one of @hourly, @daily, @weekly, @monthly, @yearly, @reboot")
            return value
        if len(fields) != 5 or not all(_CRON_FIELD_RE.match(f) for f in fields):
            raise ValueError(f"{value!r} is not a cron expression of 5 fields such as '0 3 * * 1-5'")
        return value


class Environment(_Model):
    """One deployment environment, as written in inventories/<name>/environment.yml."""

    name: str
    description: str = ""
    target: Literal["local", "aws"]
    protected: bool = False
    terraform: Annotated[TerraformLocal | TerraformAws, Field(discriminator="module")]
    service: Service
    rollout: Rollout = Field(default_factory=Rollout)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    healing: Healing = Field(default_factory=Healing)
    schedule: Schedule | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ENV_NAME_RE.match(value):
            raise ValueError(f"{value!r}: expected lowercase letters, digits and '-', starting with a letter")
        return value


# --- loading -----------------------------------------------------------------------------


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


def load_environment_file(path: Path, project_dir: Path) -> LoadedEnvironment:
    """Load and validate one environment file; raise ConfigError naming file:line: field."""
    display = _display_path(path, project_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=display) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=display) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"YAML syntax error: {problem}", path=display, line=line) from None
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

    Every consumer (render, the host code, monitoring, the Ansible guard) then reads the same
    `terraform.vars.bridge`/`subnet`. The subnet is chosen once and kept under
    .orchestrate/ENV/ (see orchestrator.hosts.local.resolve_network), so re-renders are stable.
    """
    terraform = loaded.env.terraform
    if not isinstance(terraform, TerraformLocal) or (terraform.vars.bridge and terraform.vars.subnet):
        return loaded
    from orchestrator.hosts.local import resolve_network  # the host code imports this module

    v = terraform.vars
    network = resolve_network(loaded.project_dir, loaded.name, host_prefix=v.host_prefix, bridge=v.bridge,
                              subnet=v.subnet)
    fleet_vars = v.model_copy(update={"bridge": network.bridge, "subnet": network.subnet})
    env = loaded.env.model_copy(update={"terraform": terraform.model_copy(update={"vars": fleet_vars})})
    return replace(loaded, env=env)


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


# --- project -----------------------------------------------------------------------------


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
