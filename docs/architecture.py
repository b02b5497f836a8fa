"""growc's architecture, computed from its source: the import graph, its layers and the op registry.

Run ``python docs/architecture.py`` to regenerate ``docs/architecture.dot`` and ``docs/architecture.svg`` (the
layer diagram; ``--check`` only lists the violations) after changing what imports what.
``tests/test_architecture.py`` fails while the checked-in files disagree with the source, and whenever a module
imports upward, an import cycle appears, or a private name crosses a module boundary.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: The layers, lowest first, each with the packages (or modules) it holds and what it owns. A module may import
#: modules of a lower layer and of its own package (or, for a layer of plain modules, the layer's other modules);
#: never a higher layer, never a sibling package of the same layer.
LAYERS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("base", ("growc.errors", "growc.io", "growc.version"), "errors, atomic file I/O, the version"),
    ("runtime", ("growc.runtime",), "template banks, mixed and grid layers, weight generation, parameter groups"),
    ("fx", ("growc.fx",), "capture, shape analysis, comparison, pass checks, the pass contract, the op registry"),
    ("passes", ("growc.passes",), "templatize, channels, fuse, widen, materialize: pure graph rewrites"),
    ("spec", ("growc.spec",), "YAML documents with located errors, growth specs, recipes, data sections, schemas"),
    ("models", ("growc.models",), "the zoo: growc's architectures, the safe model resolver, local data sets"),
    ("compile", ("growc.compile", "growc.testing"), "spec -> grown GraphModule and artifact; property-test kit"),
    ("train", ("growc.train",), "recipes -> trained weights: loop, schedule, checkpoints, run folders, reports"),
    ("interface", ("growc.cli", "growc.__main__", "growc"), "the command line and the public API"),
)


def layer_of(module: str) -> tuple[int, str]:
    """``(rank, package)`` of a growc module: the longest matching entry of :data:`LAYERS`."""
    best: tuple[int, str] | None = None
    for rank, (_, packages, _) in enumerate(LAYERS):
        for package in packages:
            if (module == package or module.startswith(package + ".")) and (
                best is None or len(package) > len(best[1])
            ):
                best = (rank, package)
    if best is None:
        raise ValueError(f"{module} belongs to no layer of docs/architecture.py")
    return best


def module_files() -> dict[str, Path]:
    """Every growc module and the file it comes from (``passes/`` is installed as ``growc.passes``)."""
    out: dict[str, Path] = {}
    for base, package in ((ROOT / "growc", "growc"), (ROOT / "passes", "growc.passes")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


@dataclass(frozen=True)
class Import:
    importer: str
    module: str  # the growc module imported (or the module a name is taken from)
    name: str | None  # the name taken, for ``from module import name`` of a non-module
    line: int
    lazy: bool  # inside a function body


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _dynamic_import(node: ast.AST) -> str | None:
    """The module a ``importlib.import_module("...")`` or ``__import__("...")`` call names, if a constant."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    if ast.unparse(node.func) not in ("importlib.import_module", "import_module", "__import__"):
        return None
    return node.args[0].value if isinstance(node.args[0].value, str) else None


def readers(files: dict[str, Path] | None = None) -> dict[str, Path]:
    """growc's modules and the test modules (``tests.test_x``): everything that must not reach into privates."""
    out = dict(files or module_files())
    for path in sorted((ROOT / "tests").glob("*.py")):
        out[f"tests.{path.stem}"] = path
    return out


def imports(files: dict[str, Path] | None = None) -> list[Import]:
    """Every import of a growc module by a growc module, module-level and lazy alike."""
    files = files or module_files()
    out: list[Import] = []
    for importer, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        lazy_lines = {
            n.lineno
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))
        }
        for node in ast.walk(tree):
            lazy = getattr(node, "lineno", 0) in lazy_lines
            dynamic = _dynamic_import(node)
            if dynamic is not None and dynamic.split(".")[0] == "growc":  # importlib.import_module / __import__
                out.append(Import(importer, dynamic, None, node.lineno, True))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "growc":
                        out.append(Import(importer, alias.name, None, node.lineno, lazy))
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(importer, is_package, node.level, node.module)
                if source.split(".")[0] != "growc":
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in files:
                        out.append(Import(importer, sub, None, node.lineno, lazy))
                    else:
                        out.append(Import(importer, source, alias.name, node.lineno, lazy))
    return out


def _module_aliases(tree: ast.AST, reader: str, is_package: bool, files: dict[str, Path]) -> dict[str, str]:
    """Names bound to growc modules in a file: ``import growc.x as y`` -> ``y``, ``import growc.x`` -> ``growc``,
    ``from growc import x`` (a module) -> ``x``."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("growc"):
                    aliases[alias.asname or "growc"] = alias.name if alias.asname else "growc"
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(reader, is_package, node.level, node.module)
            for alias in node.names:
                if f"{source}.{alias.name}" in files:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def _private_reach(node: ast.AST, aliases: dict[str, str], files: dict[str, Path]) -> str | None:
    """``module._name`` when ``node`` reaches a module-level private name of a growc module, else None."""

    def module_of(expr: ast.AST) -> str | None:
        head, _, rest = ast.unparse(expr).partition(".")
        dotted = aliases.get(head, "") + ("." + rest if rest else "")
        return dotted if dotted in files else None

    if isinstance(node, ast.Attribute) and _private(node.attr):
        module = module_of(node.value)
        return f"{module}.{node.attr}" if module else None
    if isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "setattr", "hasattr"):
        if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and _private(node.args[1].value):
            module = module_of(node.args[0])
            return f"{module}.{node.args[1].value}" if module else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("growc."):
        module, _, name = node.value.rpartition(".")
        return node.value if module in files and _private(name) else None
    return None


def private_attribute_uses(files: dict[str, Path] | None = None) -> list[tuple[str, int, str]]:
    """``(reader, line, "module._name")`` wherever growc's code or tests reach a module-level private name of
    another growc module: ``alias._name`` (through ``import growc`` and dotted paths too), ``getattr(alias,
    "_name")``, or a string target such as ``monkeypatch.setattr("growc.cli._schema", ...)``."""
    files = files or module_files()
    out = []
    for reader, path in readers(files).items():
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = _module_aliases(tree, reader, path.name == "__init__.py", files)
        for node in ast.walk(tree):
            found = _private_reach(node, aliases, files)
            if found and found.rpartition(".")[0] != reader:
                out.append((reader, node.lineno, found))
    return out


def _private(name: object) -> bool:
    return isinstance(name, str) and name.startswith("_") and not name.startswith("__")


def _private_members(files: dict[str, Path]) -> dict[str, set[str]]:
    """Private members growc classes define (``def _x`` in a class, ``self._x = ...``, ``setattr(obj, "_x", ...)``),
    less the names torch's own classes have (``_modules``, ``_version``, ...), with the modules defining them."""
    import torch
    from torch import fx, nn

    foreign = set()
    for cls in (nn.Module, nn.Parameter, torch.Tensor, fx.GraphModule, fx.Graph, fx.Node, fx.Interpreter):
        foreign |= set(dir(cls))
    defined: dict[str, set[str]] = {}

    def add(name: Any, module: str) -> None:
        if isinstance(name, str) and name.startswith("_") and not name.startswith("__") and name not in foreign:
            defined.setdefault(name, set()).add(module)

    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if isinstance(item, ast.FunctionDef):
                        add(item.name, module)
                    elif isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                        if isinstance(item.value, ast.Name) and item.value.id == "self":
                            add(item.attr, module)
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("object.__setattr__", "setattr"):
                if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    add(node.args[1].value, module)
    return defined


def private_member_uses(files: dict[str, Path] | None = None) -> list[tuple[str, int, str]]:
    """``(module, line, "._x")`` wherever growc's code or tests use a private member a growc class of another
    module defines (an attribute, or ``getattr``/``setattr``/``hasattr`` by name)."""
    files = files or module_files()
    defined = _private_members(files)
    out = []
    for module, path in readers(files).items():
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "setattr", "hasattr"):
                if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    name = node.args[1].value
            if isinstance(name, str) and name in defined and module not in defined[name]:
                out.append((module, node.lineno, f".{name} (a private member of {', '.join(sorted(defined[name]))})"))
    return out


def violations() -> list[str]:
    """Every upward import, same-layer import across packages, private name crossing modules, and cycle."""
    import networkx as nx

    files = module_files()
    found = imports(files)
    problems = []
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for imp in found:
        if imp.module not in files:
            problems.append(f"{imp.importer}:{imp.line} imports {imp.module}, which does not exist")
            continue
        if imp.module != imp.importer:
            graph.add_edge(imp.importer, imp.module)
        (ra, pa), (rb, pb) = layer_of(imp.importer), layer_of(imp.module)
        packages = files.get(pa, Path()).name == "__init__.py" and files.get(pb, Path()).name == "__init__.py"
        if rb > ra or (rb == ra and pa != pb and packages):
            problems.append(
                f"{imp.importer}:{imp.line} ({LAYERS[ra][0]}) imports {imp.module} ({LAYERS[rb][0]}): "
                "layers import only downward"
            )
        if imp.name and imp.name.startswith("_") and not imp.name.startswith("__") and imp.module != imp.importer:
            problems.append(f"{imp.importer}:{imp.line} imports the private name {imp.module}.{imp.name}")
    for importer, line, name in private_attribute_uses(files):
        problems.append(f"{importer}:{line} uses the private name {name}")
    for reader, line, name in private_member_uses(files):
        problems.append(f"{reader}:{line} uses {name}")
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            problems.append("import cycle: " + " <-> ".join(sorted(component)))
    return problems


def package_edges() -> list[tuple[str, str]]:
    """The import graph folded onto packages (layer entries), without self-edges, sorted."""
    files = module_files()
    edges = set()
    for imp in imports(files):
        if imp.module in files:
            a, b = layer_of(imp.importer)[1], layer_of(imp.module)[1]
            if a != b:
                edges.add((a, b))
    return sorted(edges)


def registry_summary() -> list[tuple[str, int]]:
    """The built-in op rules by kind, most entries first: ``[("Unary", 50), ...]`` (read from the registry)."""
    from collections import Counter

    from growc.fx.registry import op_rules

    kinds = Counter(type(entry.rule).__name__ for entry in op_rules().values() if entry.builtin)
    return sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))


def _registry_label(per_line: int = 4) -> str:
    kinds = [f"{name} {count}" for name, count in registry_summary()]
    rows = [", ".join(kinds[i : i + per_line]) for i in range(0, len(kinds), per_line)]
    total = sum(count for _, count in registry_summary())
    return "\n".join([f"op registry (growc.fx.registry): {total} built-in rules", *rows])


def dot() -> str:
    """The layer diagram as Graphviz DOT: one row per layer (lowest at the bottom), its packages' modules, and
    the package-level import edges."""
    files = module_files()
    lines = [
        "// generated by docs/architecture.py from growc's source; do not edit",
        "digraph growc {",
        "  rankdir=BT; node [shape=box, fontname=Helvetica, fontsize=10]; edge [color=gray40];",
    ]
    for rank, (name, packages, owns) in enumerate(LAYERS):
        lines.append(f'  subgraph cluster_{rank} {{ label="{name}: {owns}"; fontsize=10; rank=same;')
        for package in packages:
            members = sorted(
                m.removeprefix(package + ".")
                for m in files
                if (m == package or m.startswith(package + ".")) and layer_of(m)[1] == package and m != package
            )
            label = package + (("\\n" + ", ".join(members)) if members else "")
            lines.append(f'    "{package}" [label="{label}"];')
        lines.append("  }")
    for a, b in package_edges():
        lines.append(f'  "{a}" -> "{b}";')
    lines.append(f'  "op registry" [shape=note, label="{_registry_label()}"];')
    lines.append('  "growc.passes" -> "op registry" [style=dashed, label="channels, fuse: rule_for(node)"];')
    lines.append('  "growc" -> "op registry" [style=dashed, label="register_op (users)"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def figure():  # a matplotlib Figure (matplotlib is imported lazily)
    """The layer diagram as a matplotlib figure: one band per layer, lowest at the bottom, package boxes in it
    listing their modules, package-level import edges as arrows (less the edges into the base layer, which every
    layer uses, and out of the package root, which re-exports the public API; the DOT source has them all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "growc"
    files = module_files()
    width, band = 15.0, 1.25
    fig, ax = plt.subplots(figsize=(width, band * len(LAYERS) + 0.4))
    ax.set_xlim(0, width)
    ax.set_ylim(-0.2, band * len(LAYERS) + 0.2)
    ax.axis("off")
    centers: dict[str, tuple[float, float]] = {}
    for rank, (name, packages, owns) in enumerate(LAYERS):
        y = rank * band
        ax.add_patch(plt.Rectangle((0.05, y + 0.05), width - 0.1, band - 0.1, fc="#f3f3f3", ec="#bbbbbb"))
        ax.text(0.15, y + band - 0.25, name, fontsize=10, weight="bold", va="center")
        ax.text(0.15, y + 0.22, owns, fontsize=6.5, color="#555555", va="center", wrap=True)
        slot = (width - 3.4) / len(packages)
        for i, package in enumerate(packages):
            x = 3.2 + slot * (i + 0.5)
            members = sorted(
                m.removeprefix(package + ".")
                for m in files
                if m.startswith(package + ".") and layer_of(m)[1] == package
            )
            text = package + ("\n" + ", ".join(members) if members else "")
            ax.text(x, y + band / 2, text, fontsize=7, ha="center", va="center",
                    bbox={"boxstyle": "round", "fc": "white", "ec": "#336699"})  # fmt: skip
            centers[package] = (x, y + band / 2)
    fx_rank = next(i for i, layer in enumerate(LAYERS) if layer[0] == "fx")
    registry = (width - 2.4, fx_rank * band + band / 2)
    ax.text(*registry, _registry_label(per_line=3), fontsize=6, ha="center", va="center", family="monospace",
            bbox={"boxstyle": "round", "fc": "#fff8e0", "ec": "#cc9933"})  # fmt: skip
    for source, label in (("growc.passes", "rule_for(node)"), ("growc", "register_op")):
        (xs, ys) = centers[source]
        arrow = {"arrowstyle": "->", "color": "#cc9933", "lw": 0.8, "ls": "--"}
        ax.annotate(label, xy=(registry[0], registry[1] + 0.35), xytext=(xs + 0.9, ys - 0.25), fontsize=6,
                    color="#aa7722", arrowprops=arrow)  # fmt: skip
    base = set(LAYERS[0][1])
    for a, b in package_edges():
        if b in base or a == "growc":  # every layer may use the base; the root re-exports the public API
            continue
        (xa, ya), (xb, yb) = centers[a], centers[b]
        ax.annotate("", xy=(xb, yb + 0.3), xytext=(xa, ya - 0.3),
                    arrowprops={"arrowstyle": "->", "color": "#7799bb", "lw": 0.6, "alpha": 0.7,
                                "connectionstyle": "arc3,rad=0.08"})  # fmt: skip
    return fig


def svg(source: str) -> str:
    """:func:`figure` as SVG, carrying the SHA-256 of the DOT source drawn from the same graph."""
    import io

    import matplotlib.pyplot as plt

    fig = figure()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    digest = hashlib.sha256(source.encode()).hexdigest()
    return buffer.getvalue().replace("<svg ", f"<!-- growc architecture, dot sha256 {digest} -->\n<svg ", 1)


def main(argv: list[str]) -> int:
    """Regenerate the diagram files (unless ``--check``) and print every violation; 1 when there is one."""
    if "--check" not in argv:
        source = dot()
        (ROOT / "docs" / "architecture.dot").write_text(source)
        (ROOT / "docs" / "architecture.svg").write_text(svg(source))
    problems = violations()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
