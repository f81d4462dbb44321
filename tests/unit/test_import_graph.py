"""The shape of ftray's imports: no cycles, no building block importing a stage or an
orchestrator, and the Serve app free of the training stack (every Serve replica imports
`ftray.serve.app` when it starts).

The graph is read from the source with `ast`: module-level and function-level imports both
count (a lazy import is still a dependency); imports under `if TYPE_CHECKING:` do not.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]

# Orchestrators chain stages or parse the command line: they may import any module.
ORCHESTRATORS = {"ftray.pipeline", "ftray.cli", "ftray.monitor.cli", "ftray.review.cli"}
ORCHESTRATORS |= {"ftray.submit", "ftray.rag.cli"}
# The stage modules: one entry function each, called by the orchestrators.
STAGES = {"ftray.data.prepare", "ftray.assess", "ftray.train.ray_train", "ftray.sweep"}
STAGES |= {"ftray.evaluate.stage", "ftray.serve.stage", "ftray.monitor.stage"}
STAGES |= {"ftray.review.verdict", "ftray.rag.build"}
# Leaf layers (but the stages in them): the building blocks stages are made of. None imports
# a stage or an orchestrator.
LEAF_PACKAGES = ("ftray.spec", "ftray.data", "ftray.train")
LEAF_MODULES = {"ftray.store", "ftray.errors", "ftray.progress", "ftray.artifacts"}
LEAF_MODULES |= {
    "ftray.models",
    "ftray.placement",
    "ftray.specload",
    "ftray.specdoc",
    "ftray.chat_templates",
}
# retrieval's building blocks: the Serve app and evaluation search an index without its stage
LEAF_MODULES |= {"ftray.rag.context", "ftray.rag.documents", "ftray.rag.embed", "ftray.rag.index"}

# Import cycles known and being removed; each is the set of modules the cycle runs through.
KNOWN_CYCLES: list[set[str]] = []  # none: keep it so


def module_imports(name: str, is_package: bool, source: str, modules: set[str]) -> set[str]:
    """The modules of `modules` that module `name` imports, anywhere in `source` but under
    `if TYPE_CHECKING:`. Importing `a.b.c` counts `a` and `a.b` too (their `__init__` runs),
    except the packages `name` itself is in: those are importing it, not imported by it."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: package.count(".") + 2 - node.level]
                base = ".".join([*anchor, base] if base else anchor)
            # `from ftray.evaluate import metrics` imports the module ftray.evaluate.metrics;
            # `from ftray.spec import JobSpec`, a name of the package ftray.spec
            names = {f"{base}.{alias.name}" for alias in node.names}
            found.update(names & modules or {base})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    parents = {m.rsplit(".", i)[0] for m in found for i in range(1, m.count(".") + 1)}
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    return ((found | (parents - own)) & modules) - {name}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph() -> nx.DiGraph:
    """ftray's modules, an edge from each module to every ftray module it imports."""
    files = {}
    for path in sorted((ROOT / "ftray").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        source = path.read_text(encoding="utf-8")
        targets = module_imports(name, path.name == "__init__.py", source, set(files))
        graph.add_edges_from((name, target) for target in targets)
    return graph


def _is_leaf(module: str) -> bool:
    return module not in STAGES and (
        module in LEAF_MODULES
        or any(module == p or module.startswith(f"{p}.") for p in LEAF_PACKAGES)
    )


def test_the_graph_reads_relative_lazy_and_type_checking_imports():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from .. import store\n"
        "from ..evaluate import metrics\n"
        "from .feedback import store_feedback\n"
        "from ftray.monitor import checks\n"
        "if TYPE_CHECKING:\n"
        "    from ftray.pipeline import Pipeline\n"
        "def lazy():\n"
        "    import ftray.sweep\n"
    )
    modules = {"ftray", "ftray.store", "ftray.evaluate", "ftray.evaluate.metrics", "ftray.sweep"}
    modules |= {"ftray.pipeline", "ftray.monitor", "ftray.monitor.feedback", "ftray.monitor.x"}
    modules |= {"ftray.monitor.checks"}
    found = module_imports("ftray.monitor.x", False, source, modules)
    # ftray and ftray.monitor hold the module: initialised before it, not imported by it
    assert found == modules - {"ftray.pipeline", "ftray.monitor.x", "ftray.monitor", "ftray"}
    assert module_imports(
        "ftray.spec.paths", False, "from ftray.spec import X", modules | {"ftray.spec"}
    ) == {"ftray.spec"}


def test_no_import_cycles():
    graph = import_graph()
    tangles = [set(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    unknown = [nodes for nodes in tangles if nodes not in KNOWN_CYCLES]
    cycles = [nx.find_cycle(graph.subgraph(nodes)) for nodes in unknown]
    shown = [" -> ".join([*(a for a, _ in cycle), cycle[0][0]]) for cycle in cycles]
    assert not shown, "import cycles:\n" + "\n".join(shown)


def test_leaf_layers_import_no_stage_or_orchestrator():
    graph = import_graph()
    assert set(graph) >= STAGES | ORCHESTRATORS, "a module named here no longer exists"
    upward = sorted(
        (source, target)
        for source, target in graph.edges
        if _is_leaf(source) and target in STAGES | ORCHESTRATORS
    )
    assert not upward, f"leaf modules importing a stage or an orchestrator: {upward}"


def test_only_orchestrators_import_orchestrators():
    upward = sorted(
        (source, target)
        for source, target in import_graph().edges
        if target in ORCHESTRATORS and source not in ORCHESTRATORS
    )
    assert not upward, f"modules importing an orchestrator: {upward}"


def test_only_orchestrators_import_stages():
    """Stages are called by the orchestrators, not by each other or by building blocks; the
    sweep alone builds on another stage (each trial is a train stage's run)."""
    allowed = {("ftray.sweep", "ftray.train.ray_train")}
    upward = sorted(
        (source, target)
        for source, target in import_graph().edges
        if target in STAGES and source not in ORCHESTRATORS and (source, target) not in allowed
    )
    assert not upward, f"modules importing a stage: {upward}"


def test_serving_does_not_import_training():
    """What a Serve replica imports pulls in neither the trainer nor data preparation."""
    code = (
        "import sys, ftray.serve.app\n"
        "print(*sorted(m for m in sys.modules if m.startswith('ftray.train') "
        "or m == 'ftray.data.prepare'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []
