"""Pictures of a grown model: its fx graph and channel groups as Graphviz, its coefficients as a heatmap.

* :func:`graph_dot` - the fx graph as Graphviz DOT (template-mixed layers blue, grown grid layers green, the
  per-parent fallbacks orange).
* :func:`write_graphic` - writes DOT text to ``.dot``/``.gv``, or renders ``.svg``/``.png``/``.pdf`` with the
  Graphviz ``dot`` program.
* :func:`coefficient_heatmap` - one heatmap row per coefficient row of every bank (labelled with the layer or grid
  block that uses it), one column per template (matplotlib, PNG/SVG/PDF).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

from torch import fx, nn

from growc.errors import GrowcError
from growc.io import atomic_file, atomic_write_text
from growc.runtime.bank import TemplateBank
from growc.runtime.layers import GRID_TYPES, MIXED_TYPES

__all__ = ["coefficient_heatmap", "coefficient_rows", "graph_dot", "write_graphic"]

_RENDERED = {".svg": "svg", ".png": "png", ".pdf": "pdf"}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def graph_dot(gm: fx.GraphModule, title: str = "growc") -> str:
    """The graph of ``gm`` as Graphviz DOT: one box per node (op and target), edges along data flow."""
    lines = [f"digraph {_quote(title)} {{", "  rankdir=TB;", '  node [shape=box, fontsize=10, fontname="monospace"];']
    fallbacks = {
        f["node"] for key in ("fuse", "widen") for f in gm.meta.get("growc", {}).get(key, {}).get("fallbacks", [])
    }
    for node in gm.graph.nodes:
        label, color = f"{node.name}\n{node.op}", "black"
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            label += f" {type(module).__name__}"
            if isinstance(module, GRID_TYPES):
                color = "darkgreen"
                label += f" {len(module.blocks)}x{len(module.blocks[0])}"
            elif isinstance(module, MIXED_TYPES):
                color = "blue"
        elif node.op in ("call_function", "call_method"):
            label += f" {getattr(node.target, '__name__', node.target)}"
        elif node.op == "get_attr":
            label += f" {node.target}"
        if node.name in fallbacks or any(node.name.startswith(f"{f}_p") for f in fallbacks):
            color = "darkorange"
        lines.append(f"  {_quote(node.name)} [label={_quote(label)}, color={color}];")
    for node in gm.graph.nodes:
        for user in node.users:
            lines.append(f"  {_quote(node.name)} -> {_quote(user.name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_graphic(dot: str, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write DOT text to ``path``: ``.dot``/``.gv`` as text, ``.svg``/``.png``/``.pdf`` rendered by Graphviz.

    Written atomically (missing folders are created); ``overwrite=False`` refuses an existing file. A disk problem is
    a :class:`~growc.errors.GrowcIOError` naming ``path``.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix in (".dot", ".gv"):
        atomic_write_text(target, dot, overwrite=overwrite)
        return target
    if suffix not in _RENDERED:
        raise GrowcError(f"cannot draw to '{target}': use a .dot, .gv, .svg, .png or .pdf file name")
    program = shutil.which("dot")
    if program is None:
        raise GrowcError(
            f"drawing '{target}' needs the Graphviz 'dot' program, which is not on PATH: install Graphviz or "
            f"write '{target.with_suffix('.dot')}' and render it elsewhere"
        )
    try:
        done = subprocess.run([program, f"-T{_RENDERED[suffix]}"], input=dot.encode(), capture_output=True, check=False)
    except OSError as error:
        raise GrowcError(f"cannot run Graphviz's '{program}' to render '{target}': {error.strerror or error}") from None
    if done.returncode != 0:
        raise GrowcError(f"Graphviz failed to render '{target}': {done.stderr.decode(errors='replace').strip()}")
    with atomic_file(target, overwrite=overwrite) as tmp:
        tmp.write_bytes(done.stdout)
    return target


def coefficient_rows(gm: nn.Module) -> list[tuple[str, list[float]]]:
    """Every coefficient row of every bank with a label naming its users (``bank3[1] layer1.0.conv1``)."""
    banks = {id(m): name for name, m in gm.named_modules() if isinstance(m, TemplateBank)}
    users: dict[tuple[int, int], list[str]] = {}
    for name, module in gm.named_modules():
        if isinstance(module, GRID_TYPES):
            for i, row in enumerate(module.blocks):
                for j, terms in enumerate(row):
                    for bank, index in terms:
                        users.setdefault((id(bank), index), []).append(f"{name}[{i},{j}]")
        elif isinstance(module, MIXED_TYPES):
            users.setdefault((id(module.bank), module.index), []).append(name)
    rows = []
    for name, module in gm.named_modules():
        if not isinstance(module, TemplateBank):
            continue
        coefficients = module.coefficients.detach().float().cpu()
        short = name.rpartition(".")[2]
        for index in range(coefficients.shape[0]):
            who = users.get((id(module), index), ["unused"])
            label = f"{short}[{index}] {who[0]}" + (f" +{len(who) - 1}" if len(who) > 1 else "")
            rows.append((label, coefficients[index].tolist()))
    if not banks:
        raise GrowcError("the model has no template banks: nothing to draw (templatize or grow it first)")
    return rows


def coefficient_heatmap(
    gm: nn.Module, path: str | Path, *, title: str = "template coefficients", overwrite: bool = True
) -> Path:
    """Draw :func:`coefficient_rows` as a heatmap (rows: bank rows, columns: templates) with matplotlib.

    Written atomically (missing folders are created); ``overwrite=False`` refuses an existing file. A disk problem is
    a :class:`~growc.errors.GrowcIOError` naming ``path``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise GrowcError("the heatmap needs matplotlib: pip install matplotlib") from error
    target = Path(path)
    if target.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise GrowcError(f"cannot draw the heatmap to '{target}': use a .png, .svg or .pdf file name")
    rows = coefficient_rows(gm)
    width = max(len(values) for _, values in rows)
    grid = [[*values, *([math.nan] * (width - len(values)))] for _, values in rows]
    height = min(max(3.0, 0.18 * len(rows) + 1.5), 200.0)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * width + 4.0), height))
    try:
        limit = max((abs(v) for row in grid for v in row if not math.isnan(v)), default=1.0) or 1.0
        image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=6)
        ax.set_xticks(range(width), [f"T{k}" for k in range(width)], fontsize=7)
        ax.set_xlabel("template")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.05)
        fig.tight_layout()
        with atomic_file(target, overwrite=overwrite) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return target
