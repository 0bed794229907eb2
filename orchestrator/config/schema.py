"""The environment file's schema: typed, validated sections (terraform, service, rollout,
monitoring, healing, schedule) with their defaults. Pure: no file, network or host is touched.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

_DURATION_RE = re.compile(r"^(?:(\d+)(ms|s|m|h|d|w))+$")


_DURATION_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d|w)")


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_ENV_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")


_ENV_VAR_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


_SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


_HOST_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")


_BRIDGE_RE = re.compile(r"^[a-z][a-z0-9-]{0,14}$")


_BRIDGE_NAME_MAX = 15  # IFNAMSIZ - 1


#: a login name useradd accepts (Debian's NAME_REGEX, without the trailing `$` of machine accounts)
_LOGIN_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _login_user(value: str) -> str:
    if not _LOGIN_USER_RE.match(value):
        raise ValueError(f"{value!r} is not a login name: lowercase letters, digits, '_' and '-', "
                         "starting with a letter or '_', at most 32")
    return value


def default_bridge_name(host_prefix: str) -> str:
    """The bridge of a local fleet whose env file names none: `orch-PREFIX`, or a hashed short form.

    Host prefixes are unique per machine (host names are), and so are these names: a prefix
    too long for the 15 characters of an interface name keeps its start and gets 5 hex of
    its sha256 (`or-PREFIX6-xxxxx`).
    """
    name = f"orch-{host_prefix}"
    if len(name) <= _BRIDGE_NAME_MAX:
        return name
    digest = hashlib.sha256(host_prefix.encode()).hexdigest()[:5]
    return f"or-{host_prefix[:6]}-{digest}"


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


class LocalFleetVars(_Model):
    """Inputs of terraform/modules/local_fleet."""

    host_prefix: str = Field(description="prefix of every host name, unique per fleet")
    app_count: int = Field(default=3, ge=1, le=64)
    monitoring_count: int = Field(default=1, ge=0, le=1)
    lb_count: int = Field(default=0, ge=0, le=1)
    bridge: str = Field(
        default="",
        description="name of the bridge the project owns (at most 15 chars); empty or absent: derived from "
        "host_prefix (default_bridge_name)",
    )
    subnet: str = Field(
        default="",
        description="IPv4 subnet of the bridge, /16 to /28; empty or absent: a free /24 of 10.213.0.0/16, "
        "chosen when the fleet is first rendered or provisioned and kept in .orchestrate/ENV/network.json "
        "(orchestrator.fleet.local.network.resolve_network), which loading reads",
    )
    ssh_user: str = Field(
        default="root",
        description="login user of the hosts; any but root gets passwordless sudo and root's SSH login "
        "is refused, as on cloud images (Ansible then runs with become)",
    )

    @field_validator("host_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _HOST_PREFIX_RE.match(value):
            raise ValueError(f"{value!r}: expected lowercase letters, digits and '-', starting with a letter, max 20")
        return value

    _ssh_user = field_validator("ssh_user")(_login_user)

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
    ssh_user: str = Field(default="admin", description="login user of the AMI, with sudo ('admin' on Debian)")

    _ssh_user = field_validator("ssh_user")(_login_user)

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


#: rollout.strategy and `deploy --strategy`: rolling and canary-hosts deploy host by host (batches,
#: canary hosts first); blue-green and canary-traffic move traffic on the load balancer; `canary` is
#: canary-traffic when the environment has a load-balancer host, else canary-hosts
#: (orchestrator.release.strategies.resolve_strategy)
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
        """The host-level strategy orchestrator.release.hosts runs for this setting when asked for none.

        canary and canary-hosts: canary hosts first. The traffic strategies deploy each colour as
        a rolling deploy (orchestrator.release.traffic); the entry points that may move traffic (deploy,
        up) resolve `canary` against the inventory first (orchestrator.release.strategies.resolve_strategy).
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
