"""growc.runtime.grid_layout: the pure block layouts of fused weighted layers, without fx or real banks."""

from __future__ import annotations

from growc.runtime.grid_layout import CrossBlock, head_layout, interior_layout, stem_layout

# a parent's layer as a grid of blocks of (bank, row) terms; banks are plain names here
A = [[[("a", 0)]]]  # a mixed layer: a 1 x 1 grid of its own bank row
B = [[[("b", 0)]]]
C = [[[("c", 0)]]]


def test_stem_stacks_the_parents_along_outputs() -> None:
    assert stem_layout([A, B]) == [[[("a", 0)]], [[("b", 0)]]]
    grown = [[[("a", 0)], [("a", 1)]], [[("a", 2)], [("a", 3)]]]  # an already grown 2 x 2 grid
    assert stem_layout([grown, B]) == [*grown, *B]


def test_head_puts_the_parents_side_by_side() -> None:
    assert head_layout([A, B, C], "sum") == [[[("a", 0)], [("b", 0)], [("c", 0)]]]
    assert head_layout([A, B], "mean") == head_layout([A, B], "sum")


def test_a_first_readout_head_makes_the_other_columns_new_zero_blocks() -> None:
    (row,) = head_layout([A, B, C], "first")
    assert row[0] == [("a", 0)]
    assert row[1:] == [CrossBlock(1, 0, "zero", (0, 1), ([("b", 0)],)), CrossBlock(2, 0, "zero", (0, 2), ([("c", 0)],))]


def test_interior_puts_parents_on_the_diagonal_and_new_blocks_off_it() -> None:
    inits = {(0, 1): "zero"}
    layout = interior_layout([A, B], lambda i, j: inits.get((i, j), "orthogonal"))
    assert layout == [
        [[("a", 0)], CrossBlock(0, 1, "zero", (0, 1), ([("a", 0)],))],  # a new row of the row parent's bank
        [CrossBlock(1, 0, "orthogonal", (1, 0), ([("b", 0)],)), [("b", 0)]],
    ]


def test_union_cross_blocks_draw_from_every_parents_bank() -> None:
    layout = interior_layout([A, B], lambda i, j: "random", union=True)
    assert layout[0][1] == CrossBlock(0, 1, "random", (0, 1), ([("a", 0)], [("b", 0)]))
    assert layout[1][0].sources == ([("a", 0)], [("b", 0)])


def test_grids_of_grids_keep_each_parents_blocks_and_positions() -> None:
    grown_a = [[[("a", 0)], [("a", 1)]], [[("a", 2)], [("a", 3)]]]
    grown_b = [[[("b", 0)], [("b", 1)]], [[("b", 2)], [("b", 3)]]]
    layout = interior_layout([grown_a, grown_b], lambda i, j: "orthogonal")
    assert len(layout) == 4 and all(len(row) == 4 for row in layout)
    assert layout[0][:2] == grown_a[0] and layout[3][2:] == grown_b[1]
    new = layout[1][3]  # row 1 of parent 0, from parent 1's column 1
    assert new == CrossBlock(0, 1, "orthogonal", (1, 3), ([("a", 3)],))
    assert layout[2][1].where == (2, 1) and layout[2][1].sources == ([("b", 1)],)
    # row-major: the order the fuser makes the new rows in
    order = [b.where for row in layout for b in row if isinstance(b, CrossBlock)]
    assert order == sorted(order)
