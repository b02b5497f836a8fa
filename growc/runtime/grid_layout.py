"""Block layouts of fused weighted layers: which ``(bank, row)`` terms each block of a grid layer mixes.

A parent's weighted layer is a grid of blocks (a mixed layer a 1 x 1 grid of its own bank row; a grown layer its
grid). Fusing n parents lays their grids out as one bigger grid, by where the layer sits:

* :func:`stem_layout` (shared input -> fused output): the parents' grids stacked along outputs, ``[G0; G1]``;
* :func:`head_layout` (fused input -> graph output): side by side along inputs, ``[G0 | G1]``; with
  ``readout="first"`` only parent 0 reads out and the others' columns are new zero blocks;
* :func:`interior_layout` (fused -> fused): each parent's grid on the diagonal, a new block off it for every
  block of the row parent's grid.

The builders are pure: a new block is a :class:`CrossBlock` placeholder saying what to make (which parents, its
init, where it sits, the terms whose banks it draws from), in the order the fuser makes them (row-major), so the
layout is testable without fx or banks. The fuser replaces each placeholder by the terms of its new rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Block", "CrossBlock", "Grid", "Layout", "head_layout", "interior_layout", "stem_layout"]

Block = list[tuple[Any, int]]  # the (bank, row) terms one block sums
Grid = list[list[Block]]  # rows of blocks


@dataclass(frozen=True)
class CrossBlock:
    """A new block to make: one new coefficient row per source, over the bank of that source's first term.

    Attributes:
        row_parent: the parent whose output channels the block writes.
        column_parent: the parent whose input channels it reads.
        init: the new rows' init (``"orthogonal"``, ``"zero"``, ``"random"`` or ``"copy"``).
        where: the block's ``[row, column]`` in the fused grid, as the report lists it.
        sources: the blocks whose first term's bank (and, for ``copy``, row) each new row draws from.
    """

    row_parent: int
    column_parent: int
    init: str
    where: tuple[int, ...]
    sources: tuple[Block, ...]


Layout = list[list["Block | CrossBlock"]]


def stem_layout(grids: Sequence[Grid]) -> Layout:
    """A stem's layout: every parent's rows of blocks, parent after parent (stacked along outputs)."""
    return [list(row) for grid in grids for row in grid]


def head_layout(grids: Sequence[Grid], readout: Literal["sum", "mean", "first"]) -> Layout:
    """A head's layout: one row, the parents' first rows side by side along inputs; with ``readout="first"`` the
    other parents' columns are new zero blocks (only parent 0 reads out)."""
    row: list[Block | CrossBlock] = list(grids[0][0])
    for j in range(1, len(grids)):
        if readout == "first":
            row += [CrossBlock(j, 0, "zero", (0, j), (block,)) for block in grids[j][0]]
        else:
            row += grids[j][0]
    return [row]


def interior_layout(grids: Sequence[Grid], init_of: Callable[[int, int], str], *, union: bool = False) -> Layout:
    """An interior layout: parent ``i``'s grid on the diagonal; off it, for every block ``c`` of row ``r`` of the
    row parent ``i``'s grid, a new block into parent ``i`` from parent ``j``, initialised by ``init_of(i, j)``,
    over the templates of the row parent's block (``union``: of every parent's block at that position)."""
    n = len(grids)
    layout: Layout = []
    for i, grid in enumerate(grids):
        for r, parent_row in enumerate(grid):
            row: list[Block | CrossBlock] = []
            for j in range(n):
                if i == j:
                    row += parent_row
                    continue
                init = init_of(i, j)
                for c, block in enumerate(parent_row):
                    sources = tuple(grids[p][r][c] for p in range(n)) if union else (block,)
                    row.append(CrossBlock(i, j, init, (i * len(grid) + r, j * len(parent_row) + c), sources))
            layout.append(row)
    return layout
