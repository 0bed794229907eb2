"""The environment file's schema: typed, validated sections (terraform, service, rollout,
monitoring, healing, schedule) with their defaults. Pure: no file, network or host is touched.

Values are data written into other languages (systemd units, cron lines, HAProxy and Prometheus
files, HCL, an EnvironmentFile), so what cannot be written safely is refused here: control
characters in any string that ends up in one of those files, names that are not matched as a
whole (`re.fullmatch`: a `$` would let a trailing newline through), system accounts and system
directories for the service, cron expressions that cron would not run.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.config.rules import (
    ARG_PLACEHOLDERS,
    DEFAULT_ARGS,
    cron_problem,
    data_dir_problem,
    system_account_problem,
)
from orchestrator.config.types import (
    _SIZE_RE,
    Duration,
    EnvValue,
    Line,
    Text,
    _Model,
    check_args,
    parse_duration,
    parse_size,
)
from orchestrator.ids import shown as _shown

_ENV_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,15}")


_ENV_VAR_RE = re.compile(r"[A-Z_][A-Z0-9_]*")


_SERVICE_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")


_HOST_PREFIX_RE = re.compile(r"[a-z][a-z0-9-]{0,19}")


_BRIDGE_RE = re.compile(r"[a-z][a-z0-9-]{0,14}")


#: characters of a health-check path: it goes into haproxy.cfg, a PromQL label matcher and a URL
_HEALTH_PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]{0,255}")


_AWS_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")


"""One line of printable text (no newline, NUL or other control character)."""


#: a login name useradd accepts (Debian's NAME_REGEX, without the trailing `$` of machine accounts)
_LOGIN_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _login_user(value: str) -> str:
    if not _LOGIN_USER_RE.match(value):
        raise ValueError(f"{value!r} is not a login name: lowercase letters, digits, '_' and '-', "
                         "starting with a letter or '_', at most 32")
    return value


class LocalFleetVars(_Model):
    """Inputs of terraform/modules/local_fleet."""

    host_prefix: str = Field(description="prefix of every host name, unique per fleet")
    app_count: int = Field(default=3, ge=1, le=200)
    monitoring_count: int = Field(default=1, ge=0, le=1)
    lb_count: int = Field(default=0, ge=0, le=1)
    bridge: str = Field(
        default="",
        description="name of the bridge the project owns (at most 15 chars); empty or absent: derived from "
        "host_prefix (default_bridge_name)",
    )
    subnet: Line = Field(
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
        if not _HOST_PREFIX_RE.fullmatch(value):
            raise ValueError(f"{_shown(value)}: expected lowercase letters, digits and '-', starting with a letter, "
                             "max 20")
        return value

    _ssh_user = field_validator("ssh_user")(_login_user)

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, value: str) -> str:
        if value and not _BRIDGE_RE.fullmatch(value):
            raise ValueError(f"{_shown(value)}: expected lowercase letters, digits and '-', starting with a letter, "
                             "max 15")
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

    name: Line = Field(description="name prefix and Name tag of every resource")
    region: str = "eu-west-1"
    vpc_cidr: Line = "10.40.0.0/16"
    subnet_cidrs: list[Line] = Field(default_factory=lambda: ["10.40.1.0/24"], min_length=1)
    admin_cidr: Line = Field(description="CIDR allowed to reach SSH")
    app_count: int = Field(default=3, ge=1, le=200)
    instance_type: Line = "t3.micro"
    monitoring_instance_type: Line = "t3.small"
    ami_id: str = Field(description="AMI of a systemd Linux with python3 (Debian 12)")
    lb_count: int = Field(default=0, ge=0, le=1, description="HAProxy load-balancer instances (0 or 1)")
    lb_instance_type: Line = "t3.small"
    lb_ingress_cidrs: list[Line] = Field(default_factory=lambda: ["0.0.0.0/0"], min_length=1)
    service_port: int = Field(default=8080, ge=1, le=65535)
    tags: dict[Line, Line] = Field(default_factory=dict)
    ssh_user: str = Field(default="admin", description="login user of the AMI, with sudo ('admin' on Debian)")

    _ssh_user = field_validator("ssh_user")(_login_user)

    @field_validator("vpc_cidr", "admin_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        return _ipv4_cidr(value)

    @field_validator("subnet_cidrs", "lb_ingress_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return [_ipv4_cidr(item) for item in value]

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return _aws_region(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # the module's own validation, checked before terraform runs: the name becomes host names
        # in the inventory and part of every resource name
        if not re.fullmatch(r"[a-z][a-z0-9-]{1,31}", value):
            raise ValueError(f"{_shown(value)}: expected 2-32 lowercase letters, digits and '-', starting with "
                             "a letter")
        return value

    @field_validator("ami_id")
    @classmethod
    def _ami(cls, value: str) -> str:
        if not re.fullmatch(r"ami-[0-9a-f]{8,17}", value):
            raise ValueError(f"{_shown(value)} is not an AMI id such as ami-0123456789abcdef0")
        return value


def _ipv4_cidr(value: str) -> str:
    try:
        ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{_shown(value)} is not an IPv4 CIDR ({exc})") from None
    return value


def _aws_region(value: str) -> str:
    if not _AWS_REGION_RE.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not an AWS region such as eu-west-1")
    return value


class LocalBackend(_Model):
    """Terraform state on the controller under .orchestrate/<env>/terraform/."""

    type: Literal["local"] = "local"


class S3Backend(_Model):
    """Terraform state in S3 with S3-native locking (use_lockfile)."""

    type: Literal["s3"]
    bucket: str
    key: Line = "orchestrate/terraform.tfstate"
    region: str = "eu-west-1"

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
            raise ValueError(f"{_shown(value)} is not a valid S3 bucket name")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return _aws_region(value)


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
            raise ValueError(f"{_shown(value)} must start with '/'")
        if not _HEALTH_PATH_RE.fullmatch(value):
            raise ValueError(f"{_shown(value)} is not a URL path of letters, digits and . _ ~ - / "
                             "(at most 256) such as /healthz")
        return value


_METRIC_NAME_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


#: one PromQL label matcher (`class="5xx"`, `code=~"5.."`); `errors` is a comma-separated list of them
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\\n]|\\.)*"\s*'


_MATCHERS_RE = re.compile(rf"{_MATCHER}(?:,{_MATCHER})*,?\s*")


_URL_PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]{0,255}")


_FILE_NAME_RE = re.compile(r"[A-Za-z0-9_@+=:,.-]+")


def _argv(value: object, *, program: bool = False) -> list[str]:
    """An argv list of the environment file (service.args, a hook), checked like the role reads it."""
    if not isinstance(value, list):
        raise ValueError(f"expected a list of strings, got {type(value).__name__}")
    value = [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
    problem = check_args(value)
    if problem:
        raise ValueError(problem)
    argv = [str(arg) for arg in value]
    if program and argv and not argv[0]:
        raise ValueError("[0]: the program is empty")
    return argv


class ServiceMetrics(_Model):
    """The service's own Prometheus metrics: where they are and which counter counts its requests."""

    path: str = Field(default="/metrics", description="path of the Prometheus text format on the service's port")
    requests: str = Field(description="a counter of the requests the service handled, e.g. http_requests_total")
    errors: str = Field(description="label matchers selecting the failed requests of that counter, e.g. "
                                    "'code=~\"5..\"'")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _URL_PATH_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a URL path such as /metrics (letters, digits and . _ ~ - /)")
        return value

    @field_validator("requests")
    @classmethod
    def _requests(cls, value: str) -> str:
        if not _METRIC_NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Prometheus metric name such as http_requests_total")
        return value

    @field_validator("errors")
    @classmethod
    def _errors(cls, value: str) -> str:
        if not _MATCHERS_RE.fullmatch(value) or not value.strip():
            raise ValueError(f"{value!r} is not a list of PromQL label matchers such as 'code=~\"5..\"' or "
                             "'class=\"5xx\"'")
        return value.strip().rstrip(",").strip()


class ServiceHooks(_Model):
    """Commands run on each host when it switches to a new release (argv lists, no shell)."""

    before_switch: list[str] = Field(default_factory=list, description="runs before the switch; on failure the host "
                                     "keeps serving its release and the deploy counts as a failed gate")
    after_switch: list[str] = Field(default_factory=list, description="runs once the health gate passed; on "
                                    "failure the host switches back")

    @field_validator("before_switch", "after_switch", mode="before")
    @classmethod
    def _hook(cls, value: object) -> list[str]:
        return _argv(value, program=True)

    def as_role_input(self) -> dict[str, list[str]]:
        """The role's rust_service_hooks: only the hooks that are set."""
        return {name: list(argv) for name, argv in (("before_switch", self.before_switch),
                                                     ("after_switch", self.after_switch)) if argv}


class Service(_Model):
    name: str
    binary: str = Field(default="", description="executable inside the release; empty: the service's name")
    args: list[str] = Field(default_factory=lambda: list(DEFAULT_ARGS),
                            description="the service's arguments, with placeholders " +
                                        ", ".join("{" + p + "}" for p in ARG_PLACEHOLDERS))
    port: int = Field(default=8080, ge=1, le=65535)
    user: str = Field(default="", description="system user of the service; empty: the service's name")
    health: HealthCheck = Field(default_factory=HealthCheck)
    metrics: ServiceMetrics | None = Field(default=None, description="the service's Prometheus metrics; "
                                           "absent or false: none (error ratios from the load balancer)")
    hooks: ServiceHooks = Field(default_factory=ServiceHooks)
    keep_releases: int = Field(default=5, ge=2, le=100)
    data_dir: str = Field(default="", description="below /var/lib, /srv or /opt; empty: /var/lib/<name>")
    config: dict[str, EnvValue] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SERVICE_NAME_RE.fullmatch(value):
            raise ValueError(f"{_shown(value)}: expected lowercase letters, digits and '-', starting with a letter")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str, info: ValidationInfo) -> str:
        name = info.data.get("name")
        if value:
            problem = system_account_problem(value)
        elif name:  # the default user is the service's name
            problem = system_account_problem(name)
            problem = problem and f"not set, so the service would run as its name: {problem} (set service.user)"
        else:
            problem = None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("binary")
    @classmethod
    def _binary(cls, value: str) -> str:
        if value and (not _FILE_NAME_RE.fullmatch(value) or value in (".", "..")):
            raise ValueError(f"{value!r} is not a file name (letters, digits and _@+=:,.-; no '/')")
        return value

    @field_validator("args", mode="before")
    @classmethod
    def _args(cls, value: object) -> list[str]:
        return _argv(value)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, value: object) -> object:
        if value is False:
            return None
        if value is True or not isinstance(value, (dict, type(None), ServiceMetrics)):
            raise ValueError(f"expected a mapping with path, requests and errors, or false; got {value!r}")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: str, info: ValidationInfo) -> str:
        name = info.data.get("name")
        if not name:
            return value
        problem = data_dir_problem(value or f"/var/lib/{name}", name)
        if problem and not value:
            problem = f"not set, so it would be /var/lib/{name}: {problem} (set service.data_dir)"
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("config")
    @classmethod
    def _config(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not _ENV_VAR_RE.fullmatch(key):
                raise ValueError(f"{_shown(key)} is not an environment variable name (A-Z, 0-9, _)")
        return value

    @property
    def effective_user(self) -> str:
        return self.user or self.name

    @property
    def effective_data_dir(self) -> str:
        return self.data_dir or f"/var/lib/{self.name}"

    @property
    def effective_binary(self) -> str:
        """The executable's file name inside a release (`binary`, else the service's name)."""
        return self.binary or self.name


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


def _at_least(value: str, seconds: float, shown: str, why: str = "") -> str:
    """A validated duration `value`, refused below `seconds` (`shown` as the operator writes it)."""
    if parse_duration(value) < seconds:
        raise ValueError(f"{value!r} must be at least {shown}{why}")
    return value


class MonitoringLogs(_Model):
    """Central logs on the monitoring host and the alerts read from the journals."""

    enabled: bool = Field(
        default=True,
        description="every host sends its journal to systemd-journal-remote on the monitoring host (HTTPS, "
                    "certificates of the environment's own CA) and counts panics and restart-limit hits for "
                    "the log alerts; needs a monitoring host")
    max_size: str = Field(default="1G", description="disk space the central journals may use, such as 512M, 1G")
    max_age: Duration = Field(default="30d", description="central journal files older than this are removed")

    @field_validator("max_size", mode="before")
    @classmethod
    def _max_size(cls, value: object) -> str:
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
        if not _SIZE_RE.match(text) or parse_size(text) < 1024**2:
            raise ValueError(f"{value!r} is not a size of at least 1M such as 512M, 1G, 2T")
        return text

    @field_validator("max_age")
    @classmethod
    def _max_age(cls, value: str) -> str:
        return _at_least(value, 3600, "1h")


class Monitoring(_Model):
    enabled: bool = True
    scrape_interval: Duration = "15s"
    evaluation_interval: Duration = "15s"
    alert_for: Duration = "30s"
    error_ratio_threshold: float = Field(default=0.05, gt=0, lt=1)
    retention: Duration = "7d"
    logs: MonitoringLogs = Field(default_factory=MonitoringLogs)

    rule_files: list[str] = Field(
        default_factory=list,
        description="the operator's own alert rules: globs relative to inventories/ENV/ of NAME.rules.yml files, "
                    "each with its promtool test NAME.rules.test.yml beside it")

    @field_validator("scrape_interval")
    @classmethod
    def _scrape_interval(cls, value: str) -> str:
        # the blackbox exporter keeps 0.5 s of a probe's scrape timeout for itself: below 1 s a health
        # probe has no time left and fails every time (ServiceDown on every host)
        return _at_least(value, 1, "1s", " (the health probes need the time)")

    @field_validator("rule_files")
    @classmethod
    def _rule_files(cls, value: list[str]) -> list[str]:
        for index, pattern in enumerate(value):
            parts = pattern.split("/")
            if not pattern.strip() or pattern.startswith("/") or ".." in parts or any(
                    ord(c) < 32 or ord(c) == 127 for c in pattern):
                raise ValueError(f"[{index}]: {pattern!r} is not a glob relative to the environment's directory "
                                 "such as rules/*.rules.yml (no leading '/', no '..')")
        return value


class Healing(_Model):
    enabled: bool = True
    listen: Line = "127.0.0.1:9095"
    throttle: Duration = "5m"
    max_remediations: int = Field(default=3, ge=1)
    window: Duration = "1h"
    on_lock: Literal["wait", "skip"] = "wait"
    lock_wait: Duration = "2m"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{_shown(value)} is not HOST:PORT such as 127.0.0.1:9095")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{_shown(host)} is not an IP address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise ValueError(f"{_shown(host)}: an address with a scope (%...) cannot be used")
        return value


class Schedule(_Model):
    cron: str
    release: Line = Field(default="", description="binary or cargo project the scheduled `up` rolls out")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        problem = cron_problem(value)
        if problem:
            raise ValueError(problem)
        return value


NotifyEvent = Literal["deploy", "rollback", "gate_failed", "heal", "escalation", "drift"]


#: events a webhook can subscribe to (`notify.webhooks[].events`; all of them when omitted)
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("deploy", "rollback", "gate_failed", "heal", "escalation", "drift")


class SecretRef(_Model):
    """A value kept in the environment's vault file (secrets.yml) under `secret`."""

    secret: str

    @field_validator("secret")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ENV_VAR_RE.match(value):
            raise ValueError(f"{value!r} is not a secret name of secrets.yml (A-Z, 0-9, _)")
        return value


def _webhook_url(value: object) -> object:
    if isinstance(value, str):
        if not re.match(r"^https?://[^\s/]+", value.strip()):
            raise PydanticCustomError("webhook_url", "expected an http:// or https:// URL or {secret: NAME}")
        return value.strip()
    if isinstance(value, dict):
        name = value.get("secret")
        if set(value) != {"secret"} or not isinstance(name, str) or not _ENV_VAR_RE.match(name):
            raise PydanticCustomError("webhook_url", "expected {secret: NAME}, NAME a key of secrets.yml (A-Z, 0-9, _)")
        return SecretRef(secret=name)
    raise PydanticCustomError("webhook_url", "expected an http:// or https:// URL or {secret: NAME}")


class Webhook(_Model):
    """An incoming webhook (Slack, Mattermost or any JSON endpoint) and the events it gets."""

    url: Annotated[str | SecretRef, BeforeValidator(_webhook_url)]
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS),
                                      description="events posted to this webhook (default: all)")

    def wants(self, event: str) -> bool:
        return event in self.events


class Notify(_Model):
    """Where deploys, rollbacks, failed gates, healing, escalations and drift are announced."""

    webhooks: list[Webhook] = Field(default_factory=list)


_ED25519_PUBLIC_RE = re.compile(r"^ssh-ed25519 ([A-Za-z0-9+/]+={0,2})(?: [^\x00-\x1f\x7f]*)?$")


#: an ssh-ed25519 public key blob: the length-prefixed type name, then the 32-byte key
_ED25519_BLOB_PREFIX = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"


def _ed25519_public_key(value: str) -> str:
    line = value.strip()
    match = _ED25519_PUBLIC_RE.match(line)
    try:
        blob = base64.b64decode(match.group(1), validate=True) if match else b""
    except (binascii.Error, ValueError):
        blob = b""
    if not (blob.startswith(_ED25519_BLOB_PREFIX) and len(blob) == len(_ED25519_BLOB_PREFIX) + 32):
        raise ValueError("expected one line 'ssh-ed25519 AAAA... [comment]' (the content of an ed25519 .pub file)")
    return line


Ed25519PublicKey = Annotated[str, AfterValidator(_ed25519_public_key)]


class ReleaseSigning(_Model):
    """Signed releases (orchestrator.release.signing): the key that signs this environment's releases
    and the public keys its hosts accept."""

    signing_key: Line = Field(
        default="",
        description="private ed25519 key (OpenSSH format, no passphrase, mode 0600) kept outside the "
                    "state directory; relative paths are relative to the project directory; empty: "
                    ".orchestrate/ENV/release_signing_key, created on first use")
    @field_validator("signing_key")
    @classmethod
    def _key_path(cls, value: str) -> str:
        # a path the controller opens: refused here when no file system could hold it
        if len(value) > 4096 or any(len(part.encode()) > 255 for part in value.split("/")):
            raise ValueError(f"{_shown(value)} is not a usable path (a name is longer than 255 bytes, or the "
                             "path longer than 4096)")
        if value and (value.endswith("/") or value.rsplit("/", 1)[-1] in ("", ".", "..", "~")):
            raise ValueError(f"{_shown(value)} names a directory, not a key file")
        return value

    trusted_keys: list[Ed25519PublicKey] = Field(
        default_factory=list,
        description="more public keys the hosts accept besides the signing key's own, one "
                    "'ssh-ed25519 AAAA... comment' line each (e.g. the previous key during a rotation)")


class Environment(_Model):
    """One deployment environment, as written in inventories/<name>/environment.yml."""

    name: str
    description: Text = ""
    target: Literal["local", "aws"]
    protected: bool = False
    terraform: Annotated[TerraformLocal | TerraformAws, Field(discriminator="module")]
    service: Service
    rollout: Rollout = Field(default_factory=Rollout)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    healing: Healing = Field(default_factory=Healing)
    schedule: Schedule | None = None
    notify: Notify = Field(default_factory=Notify)
    keep_run_folders: int = Field(default=50, ge=1, le=100_000,
                                  description="playbook run folders kept under .orchestrate/ENV/runs/ (newest)")
    release: ReleaseSigning = Field(default_factory=ReleaseSigning)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ENV_NAME_RE.fullmatch(value):
            raise ValueError(f"{_shown(value)}: expected lowercase letters, digits and '-', starting with a letter")
        return value
