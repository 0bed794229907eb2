"""The `checkov` check: checkov on the environment's rendered Terraform root, with the project's
documented skip list.

A finding fails the check unless `terraform/checkov-skips.yml` accepts it. Each skip names the
check, the reason it does not apply (required: a skip without a reason is an error) and optionally
the resources it covers, as patterns of checkov's resource addresses in which `*` matches anything
(`module.fleet.aws_security_group.lb[*]`); without `resources` it covers every resource:

    skips:
      - check: CKV_AWS_126
        reason: detailed (1-minute) EC2 monitoring is billed per instance; Prometheus scrapes the hosts
      - check: CKV_AWS_260
        resources: ["module.fleet.aws_security_group.lb[*]"]
        reason: the load balancer serves HTTP to its clients (terraform.vars.lb_ingress_cidrs)

`orchestrate check` runs it as the gate of the same name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.errors import ConfigError
from orchestrator.fleet.render import render_environment
from orchestrator.tools.checkov import CheckovFinding, find_checkov, scan
from orchestrator.tools.clean_results import ResultKey, remember, remembered
from orchestrator.verify.core import Outcome, VerifyContext, check, failed, ok

#: the skip list, relative to the project directory
SKIPS_FILE = "terraform/checkov-skips.yml"

_CHECK_ID = re.compile(r"^CKV2?_[A-Z0-9]+_\d+$")


@dataclass(frozen=True)
class Skip:
    """One accepted check."""

    check: str
    reason: str
    resources: tuple[str, ...] = ()
    line: int = 0

    def covers(self, finding: CheckovFinding) -> bool:
        if finding.check_id != self.check:
            return False
        return not self.resources or any(_pattern(p).fullmatch(finding.resource) for p in self.resources)


def _pattern(text: str) -> re.Pattern[str]:
    # only `*` is special: resource addresses are full of brackets (aws_subnet.this[0])
    return re.compile(".*".join(re.escape(part) for part in text.split("*")))


def load_skips(project_dir: Path) -> list[Skip]:
    """The skip list of the project ([] when it has none); ConfigError naming file:line for a bad entry."""
    path = project_dir / SKIPS_FILE
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", path=SKIPS_FILE) from None
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"skips"} or not isinstance(data.get("skips") or [], list):
        raise ConfigError("expected a mapping with one key, skips: a list of {check, reason, resources}",
                          path=SKIPS_FILE, line=1)
    items = data.get("skips") or []
    nodes = _sequence_nodes(root)
    skips = []
    for index, item in enumerate(items):
        line = nodes[index].start_mark.line + 1 if index < len(nodes) else None

        def bad(message: str, index: int = index, line: int | None = line) -> ConfigError:
            return ConfigError(message, path=SKIPS_FILE, line=line, field=f"skips[{index}]")

        if not isinstance(item, dict):
            raise bad("expected a mapping with check, reason and optionally resources")
        unknown = sorted(set(item) - {"check", "reason", "resources"})
        if unknown:
            raise bad(f"unknown key {unknown[0]!r} (valid keys: check, reason, resources)")
        check_id = str(item.get("check") or "")
        if not _CHECK_ID.match(check_id):
            raise bad(f"check: {check_id!r} is not a checkov check id such as CKV_AWS_24 or CKV2_AWS_12")
        reason = str(item.get("reason") or "").strip()
        if not reason:
            raise bad(f"reason: {check_id} needs the reason it does not apply")
        resources = item.get("resources") or []
        if not isinstance(resources, list) or not all(isinstance(r, str) and r for r in resources):
            raise bad("resources: expected a list of resource address patterns such as module.fleet.aws_vpc.this")
        skips.append(Skip(check=check_id, reason=reason, resources=tuple(resources), line=line or 0))
    return skips


def _sequence_nodes(root: yaml.Node | None) -> list[yaml.Node]:
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if getattr(key, "value", None) == "skips" and isinstance(value, yaml.SequenceNode):
                return list(value.value)
    return []


def split(findings: Sequence[CheckovFinding],
          skips: Sequence[Skip]) -> tuple[list[CheckovFinding], list[CheckovFinding]]:
    """(accepted by a skip, remaining) of `findings`, each without repeats."""
    accepted: dict[tuple[str, str], CheckovFinding] = {}
    remaining: dict[tuple[str, str], CheckovFinding] = {}
    for finding in findings:
        target = accepted if any(s.covers(finding) for s in skips) else remaining
        target.setdefault((finding.check_id, finding.resource), finding)
    return list(accepted.values()), list(remaining.values())


def describe(ctx: VerifyContext, finding: CheckovFinding) -> str:
    """`CKV_AWS_24: <check name> (resource, file:first-last)`."""
    lines = f"{finding.lines[0]}-{finding.lines[1]}" if finding.lines[0] else "?"
    return f"{finding.check_id}: {finding.name} ({finding.resource}, {ctx.rel(finding.file)}:{lines})"


@check("checkov", f"checkov on the rendered Terraform root; accepted findings in {SKIPS_FILE}")
def check_checkov(ctx: VerifyContext) -> Outcome:
    """checkov's findings on the environment's rendered root (and the modules it calls), less the skips.

    A clean scan is remembered (orchestrator.tools.clean_results) by checkov itself, the rendered
    root, the modules it calls and the skip list: a release change, which touches none of them,
    does not scan again."""
    skips = load_skips(ctx.project_dir)
    rendered = render_environment(ctx.env).terraform_dir
    key = _scan_key(ctx.project_dir, rendered)
    earlier = _earlier(remembered("checkov", key))
    if earlier is not None:
        ctx.cache.setdefault("versions", {})["checkov"] = earlier["version"]
        return ok(earlier["message"] + " (unchanged since the last clean run)")
    report = scan(rendered)
    ctx.cache.setdefault("versions", {})["checkov"] = f"checkov {report.version}"
    if report.parsing_errors:
        return failed("checkov could not parse: " + ", ".join(ctx.rel(e) for e in report.parsing_errors),
                      [ctx.rel(e) for e in report.parsing_errors])
    accepted, remaining = split(report.failed, skips)
    if remaining:
        return failed("\n".join(describe(ctx, f) for f in remaining),
                      [ctx.rel(f.file) for f in remaining])
    unused = [s for s in skips if not any(s.covers(f) for f in accepted)]
    note = f"; {len(unused)} skip(s) not needed here" if unused else ""
    message = (f"{report.resources} resource(s) of {ctx.rel(rendered)}: {report.passed} check(s) passed, "
               f"{len(accepted)} finding(s) accepted by {SKIPS_FILE}{note}")
    remember("checkov", key, json.dumps({"version": f"checkov {report.version}", "message": message}))
    return ok(message)


#: what checkov's terraform framework reads (state, plans and lock files are not among them)
_TERRAFORM_SUFFIXES = (".tf", ".tf.json", ".tfvars", ".tfvars.json", ".hcl")

_LOCAL_SOURCE = re.compile(r'^\s*source\s*=\s*"(\.{1,2}/[^"]*)"', re.MULTILINE)


def _scan_key(project_dir: Path, rendered: Path) -> str:
    """What a scan of `rendered` depends on: checkov, the root's Terraform files, the project's
    terraform/ (modules and skip list) and any local module the root calls from elsewhere."""

    def terraform_file(path: Path) -> bool:
        return ".terraform" not in path.parts and path.name.endswith(_TERRAFORM_SUFFIXES)

    key = ResultKey("checkov").tool(find_checkov())
    key.tree(rendered, project_dir, keep=terraform_file)
    own = (project_dir / "terraform").resolve()
    key.tree(project_dir / "terraform", project_dir, keep=lambda path: ".terraform" not in path.parts)
    for tf in sorted(rendered.glob("*.tf")):
        for source in _LOCAL_SOURCE.findall(tf.read_text(encoding="utf-8")):
            module = (rendered / source).resolve()
            if module != own and own not in module.parents:
                key.text(str(module)).tree(module, module, keep=terraform_file)
    return key.hexdigest()


def _earlier(stamp: str) -> dict[str, str] | None:
    """A remembered clean scan ({version, message}), or None (none, or a stamp that is not one)."""
    try:
        earlier = json.loads(stamp) if stamp else None
    except ValueError:
        return None
    if not isinstance(earlier, dict) or not all(isinstance(earlier.get(k), str) for k in ("version", "message")):
        return None
    return earlier
