"""The resource dependency graph of an environment, joined with the orchestrator's stages.

The resource DAG is built from the `configuration` section of `terraform show -json PLANFILE`
(expressions' `references`, `depends_on`, `count`/`for_each` expressions and `module_calls`,
recursively), not from `resource_changes`: only the configuration says *why* one resource
comes after another. Nodes are configuration addresses with module prefixes and without
instance keys (`module.fleet.aws_instance.app`, never `...app[0]`).

Edges point from a dependency to its dependent (`aws_vpc.this -> aws_subnet.this`), so a
topological order is a creation order and its reverse is a destroy order.

References are followed through the places Terraform lets values flow:

- `aws_vpc.this.id`, `aws_vpc.this` -> the resource `aws_vpc.this` in the same module;
- `var.x` inside a module -> whatever the calling module passes as `x`;
- `module.fleet.hosts` -> the references of the module's output `hosts`, in the module;
- `module.fleet` alone (as in `depends_on = [module.fleet]`) -> every resource in it;
- a module call's own `depends_on`, `count` and `for_each` apply to every resource inside.

`each.*`, `count.*`, `path.*`, `self.*` and `terraform.*` name no resource. `local.*` cannot be
followed: the plan JSON does not carry locals, so a dependency that goes only through a local
is invisible here (it is listed in `GraphBuild.opaque_references`).

The stage graph is the orchestrator's own pipeline, provision -> inventory -> backup -> deploy ->
verify (and inventory -> monitoring), each stage annotated with what it touches.

The destroy order is checked against Terraform's own: `terraform graph -type=plan-destroy` of a
root that has state (`parse_destroy_graph`, `check_destroy_against_terraform`). For every edge
dependency -> dependent of the DAG built here, Terraform's destroy graph must destroy the
dependent first; a reference this module follows wrongly, or one Terraform does not see, shows
up as a mismatch naming both resources. (Without state Terraform has nothing to destroy and
draws no destroy nodes, so there is nothing to compare before the first apply.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

#: reference roots that never name a resource
NON_RESOURCE_ROOTS = frozenset({"each", "count", "path", "self", "terraform"})

#: the orchestrator's pipeline, in order, and the groups each stage works on
STAGES: tuple[tuple[str, str], ...] = (
    ("provision", "all resources"),
    ("inventory", "outputs"),
    ("backup", "group app"),
    ("deploy", "group app"),
    ("verify", "group app"),
)
#: stages off the main line: (name, after, touches)
SIDE_STAGES: tuple[tuple[str, str, str], ...] = (("monitoring", "inventory", "group monitoring"),)

STAGE_PREFIX = "stage."

_INDEX_RE = re.compile(r"\[[^\]]*\]")
_ROOT = ""


# --- problems -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph, said so that a person can find and fix it."""

    check: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


@dataclass
class GraphBuild:
    """The resource DAG plus what could not be resolved while building it."""

    graph: nx.DiGraph
    dangling: list[Problem] = field(default_factory=list)
    opaque_references: set[str] = field(default_factory=set)


# --- reference parsing --------------------------------------------------------------------


def strip_instance_keys(reference: str) -> str:
    """`module.a["x"].aws_instance.b[0].id` -> `module.a.aws_instance.b.id`."""
    return _INDEX_RE.sub("", reference)


@dataclass(frozen=True)
class Ref:
    """A parsed reference: kind is resource, var, local, module, module_output or ignored."""

    kind: str
    name: str
    output: str = ""


def parse_reference(reference: str) -> Ref:
    """Classify one entry of an expression's `references` (or of `depends_on`)."""
    parts = strip_instance_keys(reference).split(".")
    root = parts[0]
    if root in NON_RESOURCE_ROOTS:
        return Ref("ignored", reference)
    if root == "var" and len(parts) >= 2:
        return Ref("var", parts[1])
    if root == "local" and len(parts) >= 2:
        return Ref("local", parts[1])
    if root == "module" and len(parts) >= 2:
        if len(parts) >= 3:
            return Ref("module_output", parts[1], parts[2])
        return Ref("module", parts[1])
    if root in {"data", "ephemeral"} and len(parts) >= 3:
        return Ref("resource", ".".join(parts[:3]))
    if len(parts) >= 2:
        return Ref("resource", ".".join(parts[:2]))
    return Ref("ignored", reference)


def expression_references(node: Any) -> list[str]:
    """Every `references` list inside an expression tree (nested blocks included)."""
    found: list[str] = []
    if isinstance(node, Mapping):
        refs = node.get("references")
        if isinstance(refs, list) and all(isinstance(r, str) for r in refs):
            found.extend(refs)
        for key, value in node.items():
            if key in {"references", "constant_value"}:
                continue
            found.extend(expression_references(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(expression_references(item))
    return found


def _most_specific(references: Iterable[str]) -> list[str]:
    """Drop a bare `module.x` when `module.x.out` is also listed (terraform lists both)."""
    refs = list(dict.fromkeys(references))
    stripped = [strip_instance_keys(r) for r in refs]
    specific_modules = {".".join(s.split(".")[:2]) for s in stripped if s.startswith("module.") and s.count(".") >= 2}
    return [r for r, s in zip(refs, stripped, strict=True) if not (s.count(".") == 1 and s in specific_modules)]


# --- module tree --------------------------------------------------------------------------


@dataclass
class _Module:
    """One module of the configuration tree, addressed by its prefix ("" for the root)."""

    prefix: str
    body: Mapping[str, Any]
    parent: _Module | None = None
    call_name: str = ""
    call: Mapping[str, Any] = field(default_factory=dict)
    children: dict[str, _Module] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.prefix.rstrip(".") or "root module"

    def address(self, relative: str) -> str:
        return f"{self.prefix}{relative}"

    @property
    def resources(self) -> dict[str, Mapping[str, Any]]:
        found: dict[str, Mapping[str, Any]] = {}
        for res in self.body.get("resources", []) or []:
            found[str(res.get("address") or f"{res.get('type')}.{res.get('name')}")] = res
        return found

    def all_resources(self) -> Iterator[str]:
        for relative in self.resources:
            yield self.address(relative)
        for child in self.children.values():
            yield from child.all_resources()


def _module_tree(body: Mapping[str, Any], prefix: str = _ROOT, parent: _Module | None = None,
                 call_name: str = "", call: Mapping[str, Any] | None = None) -> _Module:
    module = _Module(prefix=prefix, body=body, parent=parent, call_name=call_name, call=call or {})
    for name, child_call in (body.get("module_calls") or {}).items():
        module.children[name] = _module_tree(child_call.get("module") or {}, f"{prefix}module.{name}.",
                                             module, name, child_call)
    return module


class _Resolver:
    """Turns references in a module into the resource addresses they depend on."""

    def __init__(self, root: _Module) -> None:
        self.root = root
        self.dangling: list[Problem] = []
        self.opaque: set[str] = set()
        self._output_cache: dict[tuple[str, str], set[str]] = {}
        self._var_cache: dict[tuple[str, str], set[str]] = {}
        self._active: set[tuple[str, str, str]] = set()

    def resolve(self, module: _Module, references: Iterable[str], source: str) -> set[str]:
        targets: set[str] = set()
        for reference in _most_specific(references):
            targets |= self._resolve_one(module, reference, source)
        return targets

    def _missing(self, source: str, reference: str, what: str) -> set[str]:
        self.dangling.append(Problem("references", source, f"reference {reference!r} points at {what}"))
        return set()

    def _resolve_one(self, module: _Module, reference: str, source: str) -> set[str]:
        ref = parse_reference(reference)
        if ref.kind == "ignored":
            return set()
        if ref.kind == "local":
            self.opaque.add(f"{module.prefix}local.{ref.name}")
            return set()
        if ref.kind == "resource":
            if ref.name not in module.resources:
                return self._missing(source, reference, f"no resource {ref.name!r} in {module.label}")
            return {module.address(ref.name)}
        if ref.kind == "var":
            if ref.name not in (module.body.get("variables") or {}):
                return self._missing(source, reference, f"no variable {ref.name!r} in {module.label}")
            return self._variable(module, ref.name)
        child = module.children.get(ref.name)
        if child is None:
            return self._missing(source, reference, f"no module call {ref.name!r} in {module.label}")
        if ref.kind == "module":
            return set(child.all_resources())
        if ref.output not in (child.body.get("outputs") or {}):
            return self._missing(source, reference, f"no output {ref.output!r} in {child.label}")
        return self._output(child, ref.output)

    def _guarded(self, kind: str, module: _Module, name: str) -> bool:
        key = (kind, module.prefix, name)
        if key in self._active:
            return False
        self._active.add(key)
        return True

    def _variable(self, module: _Module, name: str) -> set[str]:
        """A module's input comes from the caller's argument expression (root inputs: none)."""
        if module.parent is None:
            return set()
        key = (module.prefix, name)
        if key in self._var_cache:
            return self._var_cache[key]
        if not self._guarded("var", module, name):
            return set()
        expression = (module.call.get("expressions") or {}).get(name, {})
        source = f"{module.parent.prefix}module.{module.call_name} (argument {name})"
        found = self.resolve(module.parent, expression_references(expression), source)
        self._active.discard(("var", module.prefix, name))
        self._var_cache[key] = found
        return found

    def _output(self, module: _Module, name: str) -> set[str]:
        key = (module.prefix, name)
        if key in self._output_cache:
            return self._output_cache[key]
        if not self._guarded("output", module, name):
            return set()
        body = (module.body.get("outputs") or {}).get(name, {})
        source = f"{module.prefix}output.{name}"
        found = self.resolve(module, expression_references(body.get("expression", {})), source)
        found |= self.resolve(module, body.get("depends_on") or [], source)
        self._active.discard(("output", module.prefix, name))
        self._output_cache[key] = found
        return found

    def inherited(self, module: _Module) -> set[str]:
        """What a module call's depends_on/count/for_each make every resource inside wait for."""
        found: set[str] = set()
        current: _Module | None = module
        while current is not None and current.parent is not None:
            call = current.call
            refs = list(call.get("depends_on") or [])
            for key in ("count_expression", "for_each_expression"):
                refs += expression_references(call.get(key) or {})
            source = f"{current.parent.prefix}module.{current.call_name}"
            found |= self.resolve(current.parent, refs, source)
            current = current.parent
        return found


def _walk(module: _Module) -> Iterator[_Module]:
    yield module
    for child in module.children.values():
        yield from _walk(child)


def configuration_root(plan: Mapping[str, Any]) -> Mapping[str, Any]:
    """`configuration.root_module` of a plan JSON (ValueError when the JSON is not a plan)."""
    configuration = plan.get("configuration")
    if not isinstance(configuration, Mapping) or not isinstance(configuration.get("root_module"), Mapping):
        raise ValueError("not a plan JSON: no configuration.root_module (expected `terraform show -json PLANFILE`)")
    root: Mapping[str, Any] = configuration["root_module"]
    return root


def resource_graph(plan: Mapping[str, Any]) -> GraphBuild:
    """The resource DAG of a plan JSON, with dangling references and unfollowed locals."""
    root = _module_tree(configuration_root(plan))
    resolver = _Resolver(root)
    graph = nx.DiGraph()
    for module in _walk(root):
        for relative, res in module.resources.items():
            graph.add_node(module.address(relative), kind="resource", module=module.prefix.rstrip("."),
                           type=str(res.get("type", "")), mode=str(res.get("mode", "managed")))
    for module in _walk(root):
        inherited = resolver.inherited(module)
        for relative, res in module.resources.items():
            address = module.address(relative)
            refs = expression_references(res.get("expressions") or {})
            for key in ("count_expression", "for_each_expression"):
                refs += expression_references(res.get(key) or {})
            deps = resolver.resolve(module, refs, address)
            ordered = resolver.resolve(module, res.get("depends_on") or [], address)
            for dep in sorted(deps | ordered | inherited):
                if dep != address:
                    graph.add_edge(dep, address, via="depends_on" if dep in ordered and dep not in deps
                                   else "reference")
    # Root outputs are what the inventory stage reads.
    for name, body in (root.body.get("outputs") or {}).items():
        node = f"output.{name}"
        graph.add_node(node, kind="output", module="")
        refs = expression_references(body.get("expression", {})) + list(body.get("depends_on") or [])
        for dep in sorted(resolver.resolve(root, refs, node)):
            graph.add_edge(dep, node, via="reference")
    return GraphBuild(graph=graph, dangling=resolver.dangling, opaque_references=resolver.opaque)


# --- stages -------------------------------------------------------------------------------


def stage_node(name: str) -> str:
    """Node id of pipeline stage `name`."""
    return f"{STAGE_PREFIX}{name}"


def pipeline_graph(resources: nx.DiGraph, hosts_by_group: Mapping[str, Sequence[str]] | None = None) -> nx.DiGraph:
    """The resource DAG joined with the stage graph.

    Every resource leads into `stage.provision`, every root output into `stage.inventory`;
    the stages are chained in pipeline order. Each stage node carries `touches` (what it
    works on) and, when the inventory is known, `hosts` (the host names it works on).
    """
    graph = resources.copy()
    groups = {k: list(v) for k, v in (hosts_by_group or {}).items()}
    previous = None
    for name, touches in STAGES:
        node = stage_node(name)
        group = touches.removeprefix("group ") if touches.startswith("group ") else None
        graph.add_node(node, kind="stage", touches=touches, hosts=groups.get(group, []) if group else [])
        if previous is not None:
            graph.add_edge(previous, node, via="stage")
        previous = node
    for name, after, touches in SIDE_STAGES:
        node = stage_node(name)
        group = touches.removeprefix("group ")
        graph.add_node(node, kind="stage", touches=touches, hosts=groups.get(group, []))
        graph.add_edge(stage_node(after), node, via="stage")
    for node, data in resources.nodes(data=True):
        if data.get("kind") == "resource":
            graph.add_edge(node, stage_node("provision"), via="stage")
        elif data.get("kind") == "output":
            graph.add_edge(node, stage_node("inventory"), via="stage")
    return graph


# --- checks -------------------------------------------------------------------------------


def find_cycle(graph: nx.DiGraph) -> list[str] | None:
    """A cycle as a node path that returns to its start, or None when the graph is a DAG."""
    try:
        edges = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return None
    path = [str(u) for u, _ in edges]
    return [*path, path[0]]


def check_acyclic(graph: nx.DiGraph) -> list[Problem]:
    """A problem naming the cycle path when the graph has one."""
    cycle = find_cycle(graph)
    if cycle is None:
        return []
    return [Problem("acyclic", cycle[0], "dependency cycle: " + " -> ".join(cycle))]


def creation_order(graph: nx.DiGraph) -> list[str]:
    """Dependencies first; ties broken by name so the order is stable."""
    return [str(n) for n in nx.lexicographical_topological_sort(graph)]


def destroy_order(graph: nx.DiGraph) -> list[str]:
    """The reverse of the creation order: dependents are destroyed before what they depend on."""
    return list(reversed(creation_order(graph)))


def check_destroy_order(graph: nx.DiGraph, order: Sequence[str]) -> list[Problem]:
    """For every edge dependency -> dependent, the dependent must come first in `order`."""
    position = {node: i for i, node in enumerate(order)}
    problems = []
    for node in graph.nodes:
        if node not in position:
            problems.append(Problem("destroy-order", str(node), "missing from the destroy order"))
    for dependency, dependent in graph.edges:
        if dependency in position and dependent in position and position[dependent] > position[dependency]:
            problems.append(Problem("destroy-order", str(dependent),
                                    f"destroyed after {dependency}, which it depends on"))
    return problems


# --- terraform's own destroy order ---------------------------------------------------------


_DESTROY_NODE_RE = re.compile(r"^\[root\] (?P<address>.+?) \(destroy(?: deposed [^)]*)?\)$")
_DOT_NODE_RE = re.compile(r'^\s*"(?P<name>(?:[^"\\]|\\.)*)"\s*\[')
_DOT_EDGE_RE = re.compile(r'^\s*"(?P<source>(?:[^"\\]|\\.)*)"\s*->\s*"(?P<target>(?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class DestroyGraph:
    """`terraform graph -type=plan-destroy` read back.

    `order` has an edge a -> b when Terraform finishes a before it starts b (the DOT draws
    b -> a: "b waits for a"), over Terraform's own node names; `nodes` maps each resource
    address (instance keys stripped) to its destroy node.
    """

    order: nx.DiGraph
    nodes: Mapping[str, str]

    def destroyed_before(self, first: str, second: str) -> bool:
        """Whether Terraform destroys resource `first` before resource `second` (on some path)."""
        return bool(nx.has_path(self.order, self.nodes[first], self.nodes[second]))


def parse_destroy_graph(dot: str) -> DestroyGraph:
    """Read the DOT that `terraform graph -type=plan-destroy` prints (Terraform 1.11).

    Edges are `"[root] A (destroy)" -> "[root] B (destroy)"`: A's destroy waits for B's. The
    graph is transitively reduced, and paths may pass through provider and other nodes, so
    orderings are answered by reachability, never by single edges.
    """
    order = nx.DiGraph()
    nodes: dict[str, str] = {}

    def note(name: str) -> None:
        order.add_node(name)
        match = _DESTROY_NODE_RE.match(name)
        if match:
            nodes.setdefault(strip_instance_keys(match.group("address")), name)

    for line in dot.splitlines():
        edge = _DOT_EDGE_RE.match(line)
        if edge:
            waiting, first = (edge.group(k).replace('\\"', '"') for k in ("source", "target"))
            note(waiting)
            note(first)
            order.add_edge(first, waiting)
            continue
        node = _DOT_NODE_RE.match(line)
        if node:
            note(node.group("name").replace('\\"', '"'))
    return DestroyGraph(order=order, nodes=nodes)


@dataclass(frozen=True)
class DestroyComparison:
    """How the DAG's destroy order compared with Terraform's destroy graph."""

    source: str
    edges_checked: int
    resources_compared: int
    not_in_state: list[str]
    problems: list[Problem]


def check_destroy_against_terraform(graph: nx.DiGraph, destroy: DestroyGraph, *,
                                    source: str = "terraform graph -type=plan-destroy") -> DestroyComparison:
    """For every dependency -> dependent edge between managed resources of `graph`, Terraform
    must destroy the dependent before the dependency; each violation names both resources.

    Resources without a destroy node (not in state: count 0, not created yet) cannot be
    compared; they are listed in `not_in_state`.
    """
    managed = {str(n) for n, data in graph.nodes(data=True)
               if data.get("kind") == "resource" and data.get("mode", "managed") == "managed"}
    compared = sorted(managed & set(destroy.nodes))
    problems: list[Problem] = []
    checked = 0
    for dependency, dependent in sorted(graph.edges):
        if dependency not in destroy.nodes or dependent not in destroy.nodes:
            continue
        if dependency not in managed or dependent not in managed:
            continue
        checked += 1
        if destroy.destroyed_before(dependent, dependency):
            continue
        if destroy.destroyed_before(dependency, dependent):
            message = (f"depends on {dependency}, but terraform destroys {dependency} before {dependent} "
                       f"({source})")
        else:
            message = (f"depends on {dependency}, but terraform's destroy graph does not order {dependent} "
                       f"before {dependency} ({source})")
        problems.append(Problem("destroy-order", str(dependent), message))
    return DestroyComparison(source=source, edges_checked=checked, resources_compared=len(compared),
                             not_in_state=sorted(managed - set(destroy.nodes)), problems=problems)


# --- all checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphReport:
    """Outcome of the graph checks."""

    resources: int
    edges: int
    problems: list[Problem]
    destroy_order: list[str]
    opaque_references: list[str]
    #: the comparison with terraform's destroy graph; None when no such graph was given
    terraform_destroy: DestroyComparison | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_plan(plan: Mapping[str, Any], *, terraform_destroy: DestroyGraph | None = None,
               destroy_source: str = "terraform graph -type=plan-destroy") -> GraphReport:
    """Run every graph check on a plan JSON: references resolve, no cycle, and (given
    Terraform's destroy graph of the same root) Terraform destroys dependents first."""
    build = resource_graph(plan)
    problems = list(build.dangling)
    problems += check_acyclic(build.graph)
    order: list[str] = []
    comparison = None
    if not any(p.check == "acyclic" for p in problems):
        order = destroy_order(build.graph)
        problems += check_acyclic(pipeline_graph(build.graph))
        if terraform_destroy is not None:
            comparison = check_destroy_against_terraform(build.graph, terraform_destroy, source=destroy_source)
            problems += comparison.problems
    kinds = dict(build.graph.nodes(data="kind"))
    resources = sum(1 for kind in kinds.values() if kind == "resource")
    return GraphReport(resources=resources, edges=build.graph.number_of_edges(), problems=problems,
                       destroy_order=[n for n in order if kinds.get(n) == "resource"],
                       opaque_references=sorted(build.opaque_references), terraform_destroy=comparison)


# --- rendering ----------------------------------------------------------------------------


def to_json(graph: nx.DiGraph) -> dict[str, Any]:
    """Nodes (with attributes) and edges, in a stable order."""
    nodes = [{"id": str(n), **{k: v for k, v in sorted(d.items())}} for n, d in sorted(graph.nodes(data=True))]
    edges = [{"from": str(u), "to": str(v), **dict(d)} for u, v, d in sorted(graph.edges(data=True))]
    return {"nodes": nodes, "edges": edges}


def to_dot(graph: nx.DiGraph, name: str = "orchestrate") -> str:
    """Graphviz DOT; stages drawn as boxes, outputs as notes."""
    shapes = {"stage": "box", "output": "note", "resource": "ellipse"}
    lines = [f"digraph {json.dumps(name)} {{", "  rankdir = LR;"]
    for node, data in sorted(graph.nodes(data=True)):
        kind = str(data.get("kind", "resource"))
        label = str(node)
        if kind == "stage" and data.get("touches"):
            label += f"\\n({data['touches']})"
        lines.append(f"  {json.dumps(str(node))} [shape={shapes.get(kind, 'ellipse')}, label={json.dumps(label)}];")
    for u, v, data in sorted(graph.edges(data=True)):
        style = " [style=dashed]" if data.get("via") == "depends_on" else ""
        lines.append(f"  {json.dumps(str(u))} -> {json.dumps(str(v))}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(graph: nx.DiGraph) -> str:
    """A mermaid flowchart (`flowchart LR`); node ids are sanitised, labels keep the address."""
    ids = {node: f"n{i}" for i, node in enumerate(sorted(graph.nodes))}
    lines = ["flowchart LR"]
    for node, data in sorted(graph.nodes(data=True)):
        label = str(node).replace('"', "'")
        if data.get("kind") == "stage":
            lines.append(f'  {ids[node]}[["{label}"]]')
        else:
            lines.append(f'  {ids[node]}["{label}"]')
    for u, v, data in sorted(graph.edges(data=True)):
        arrow = "-.->" if data.get("via") == "depends_on" else "-->"
        lines.append(f"  {ids[u]} {arrow} {ids[v]}")
    return "\n".join(lines) + "\n"


FORMATS = {"json": lambda g: json.dumps(to_json(g), indent=2) + "\n", "dot": to_dot, "mermaid": to_mermaid}
