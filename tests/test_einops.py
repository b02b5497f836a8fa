"""einops in ``forward``: recorded as single graph ops under fx, with op rules derived from the parsed pattern that
channel analysis and fusion read; and captured through ``torch.export``, where einops lowers to ATen views."""

from __future__ import annotations

from collections.abc import Callable

import einops
import pytest
import torch
from einops import pack, rearrange, repeat, unpack
from einops.layers.torch import Rearrange, Reduce
from einops_models import LayerNet, Mixer, TokenMixer
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import growc
from growc.fx.einops_ops import EINOPS_FUNCTIONS, EinopsOpaque, EinopsRule, parse_pattern
from growc.fx.registry import rule_for, rules_table
from helpers import parents

IMAGE = torch.randn(2, 3, 16, 16)  # Mixer's input
SMALL = torch.randn(2, 3, 6, 6)  # LayerNet's input
MODELS: dict[str, tuple[Callable[[], nn.Module], torch.Tensor]] = {
    "mixer": (Mixer, IMAGE),
    "layers": (LayerNet, SMALL),
}


def rel_error(expected: torch.Tensor, got: torch.Tensor) -> float:
    return growc.max_abs_rel_error(expected, got)[1]


def einops_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in EINOPS_FUNCTIONS]


def group_with(analysis: growc.passes.channels.ChannelAnalysis, dim: tuple[str, str, int]):
    return next((g for g in analysis.groups if dim in g.dims), None)


def permuted_output(gm: torch.fx.GraphModule, analysis, group, x: torch.Tensor) -> torch.Tensor:
    """``gm(x)`` with ``group``'s channels permuted in every parameter that carries them (in blocks where a merge
    holds them); the state is restored afterwards."""
    state = {k: v.clone() for k, v in gm.state_dict().items()}
    params = dict(gm.named_parameters())
    perm = torch.randperm(group.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name, axis in group.params:
            params[name].copy_(params[name].index_select(axis, perm))
        for name, axis, offset, block in analysis.permutation_slices(group):
            index = torch.arange(params[name].shape[axis])
            index[offset : offset + group.size * block] = (
                offset + (perm[:, None] * block + torch.arange(block)).flatten()
            )
            params[name].copy_(params[name].index_select(axis, index))
        out = gm(x)
    gm.load_state_dict(state)
    return out


# ---- capture ---------------------------------------------------------------------------------------------------


def test_fx_records_each_einops_call_as_one_node_in_root_and_submodules_of_other_files() -> None:
    model = Mixer(depth=2).eval()
    gm = growc.trace(model)
    nodes = einops_nodes(gm)
    # root: rearrange + reduce; each block: TokenMixer (imported name) 2, ChannelMixer (einops.rearrange) 2
    assert [n.target for n in nodes] == [einops.rearrange] + [einops.rearrange] * 8 + [einops.reduce]
    assert nodes[0].args[1] == "b c h w -> b (h w) c" and nodes[-1].args[1:] == ("b n d -> b d", "mean")
    assert gm.meta["growc"]["trace"]["fallback_leaves"] == []
    assert not [n for n in gm.graph.nodes if n.op == "call_module" and "mixer" in str(n.target).lower()]
    with torch.no_grad():
        assert torch.equal(gm(IMAGE), model(IMAGE))


def test_fx_keeps_einops_layers_as_leaves() -> None:
    model = LayerNet().eval()
    gm = growc.trace(model)
    modules = {str(n.target): type(gm.get_submodule(str(n.target))) for n in gm.graph.nodes if n.op == "call_module"}
    assert {k: v for k, v in modules.items() if v in (Rearrange, Reduce)} == {
        "last": Rearrange,
        "first": Rearrange,
        "pool": Reduce,
        "flat": Rearrange,
    }
    with torch.no_grad():
        assert torch.equal(gm(SMALL), model(SMALL))


def test_einops_stays_patched_only_while_tracing() -> None:
    growc.trace(Mixer())
    assert einops.rearrange is EINOPS_FUNCTIONS[0] and rearrange is einops.rearrange
    assert TokenMixer.forward.__globals__["rearrange"] is einops.rearrange


@pytest.mark.parametrize("name", list(MODELS))
def test_export_capture_lowers_einops_to_aten(name: str) -> None:
    make, x = MODELS[name]
    model = make().eval()
    gm = growc.trace(model, (x,), capture="export")
    assert gm.meta["growc"]["trace"]["capture"] == "export"
    assert not einops_nodes(gm)
    assert not [
        n
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (Rearrange, Reduce))
    ]
    with torch.no_grad():
        assert rel_error(model(x), gm(x)) <= 1e-6


# ---- templatize and fuse, fx and export ------------------------------------------------------------------------


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("name", list(MODELS))
def test_templatize_exact_preserves_the_output(name: str, capture: str) -> None:
    make, x = MODELS[name]
    model = make().eval()
    gm = growc.templatize(model, (x,), init="exact", capture=capture)
    assert gm.meta["growc"]["templatize"]["output"]["max_rel"] <= 1e-5
    with torch.no_grad():
        assert rel_error(model(x), gm(x)) <= 1e-5
    assert sum(1 for m in gm.modules() if type(m).__name__.startswith("Mixed")) >= 3


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fuse_with_zero_cross_blocks_is_the_parents_sum(name: str, capture: str) -> None:
    make, x = MODELS[name]
    a, b = parents(make)
    options = {"templatize_options": {"capture": capture}} if capture == "export" else {}
    gm = growc.fuse([a, b], (x,), cross_init="zero", **options)
    report = gm.meta["growc"]["fuse"]
    assert report["output"]["max_rel"] <= growc.exactness_tolerance(torch.float32)
    gm.eval()
    with torch.no_grad():
        assert rel_error(a(x) + b(x), gm(x)) <= growc.exactness_tolerance(torch.float32)
        other = torch.randn_like(x)  # another input of the same shape: the fusion is no fit to the example
        assert rel_error(a(other) + b(other), gm(other)) <= growc.exactness_tolerance(torch.float32)
    assert {lift["lift"] for lift in report["lifts"]} >= {"stem", "head"}


def test_fuse_takes_no_fallback_for_einops_ops_that_keep_the_channel_axis() -> None:
    a, b = parents(LayerNet)
    report = growc.fuse([a, b], (SMALL,), cross_init="zero").meta["growc"]["fuse"]
    assert report["fallbacks"] == []  # last, first (moved), pool (kept), flat (outermost of the merge)
    assert [lift["lift"] for lift in report["lifts"]] == ["stem", "grid", "grid", "head"]

    a, b = parents(Mixer)
    gm = growc.fuse([a, b], (IMAGE,), cross_init="zero")
    fallbacks = {f["node"] for f in gm.meta["growc"]["fuse"]["fallbacks"]}
    kinds: dict[str, list[str]] = {}  # by the parent node each fused einops node comes from
    for node in einops_nodes(gm):
        kinds.setdefault(node.meta["growc"]["fuse"]["source"], []).append(str(node.meta["growc"]["fuse"]["kind"]))
    einops_names = {n.name for n in einops_nodes(growc.trace(Mixer()))}
    # the stem's rearrange (channels moved), the ChannelMixers' rearranges and the final reduce run once, fused;
    # only those reading a LayerNorm's output (a per-parent fallback: it normalizes over the channels) do not
    assert {"rearrange", "rearrange_2", "rearrange_3", "rearrange_4", "reduce"} <= einops_names - fallbacks
    assert fallbacks & einops_names == {"rearrange_1", "rearrange_5"}
    assert kinds.pop("rearrange") == ["F2"] and kinds.pop("reduce") == ["F1"]  # fused along the new channel axis
    assert kinds.pop("rearrange_1") == kinds.pop("rearrange_5") == ["P", "P"]  # once per parent
    assert all(len(k) == 1 and k[0].startswith("F") for k in kinds.values())


def test_a_length_naming_the_parent_axis_takes_the_exact_fallback() -> None:
    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            last = rearrange(y, "b c h w -> b h w c", c=4)  # c=4 does not hold for the fused tensor
            return self.fc(last.mean((1, 2)) + rearrange(y, "b c h w -> b c (h w)", h=6).mean(2))

    a, b = parents(Named)
    gm = growc.fuse([a, b], (SMALL,), cross_init="zero")
    fallbacks = {f["node"] for f in gm.meta["growc"]["fuse"]["fallbacks"]}
    assert "rearrange" in fallbacks and "rearrange_1" not in fallbacks  # h=6 names another axis: lifted
    with torch.no_grad():
        assert rel_error(a(SMALL) + b(SMALL), gm(SMALL)) <= growc.exactness_tolerance(torch.float32)


class EveryOp(nn.Module):
    """repeat, einsum, pack and unpack in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(4, 5))
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, 4]
        packed, shapes = pack([self.a(x), self.b(x[:, 0])], "b * d")
        mixed = einops.einsum(packed, self.w, "b n d, d e -> b n e")
        tokens, first = unpack(mixed, shapes, "b * e")
        return self.head(tokens + repeat(first, "b e -> b n e", n=1))


def test_repeat_einsum_pack_unpack_are_graph_ops_and_fuse_exactly() -> None:
    x = torch.randn(2, 3, 4)
    model = EveryOp().eval()
    gm = growc.trace(model)
    targets = [n.target for n in einops_nodes(gm)]
    assert targets == [einops.pack, einops.einsum, einops.unpack, einops.repeat]
    assert all(isinstance(rule_for(n), EinopsOpaque) for n in einops_nodes(gm)[:3])
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    a, b = parents(EveryOp)
    fused = growc.fuse([a, b], (x,), cross_init="zero")
    fallbacks = {f["target"] for f in fused.meta["growc"]["fuse"]["fallbacks"]}
    assert {"pack", "einsum", "unpack"} <= fallbacks
    with torch.no_grad():
        assert rel_error(a(x) + b(x), fused(x)) <= growc.exactness_tolerance(torch.float32)


# ---- channel analysis ------------------------------------------------------------------------------------------


def test_channels_couple_through_moving_rearranges_and_a_merge_with_channels_outermost_is_contained() -> None:
    gm = growc.trace(LayerNet().eval())
    analysis = growc.analyze_channels(gm, (SMALL,))
    conv = group_with(analysis, ("tensor", "conv", 1))
    assert {("tensor", "last", 3), ("param", "mix.weight", 1)} <= set(conv.dims) and conv.permutable
    mix = group_with(analysis, ("tensor", "mix", 3))
    assert {("tensor", "first", 1), ("tensor", "pool", 1), ("param", "conv2.weight", 1)} <= set(mix.dims)
    assert mix.permutable
    conv2 = group_with(analysis, ("tensor", "conv2", 1))
    flat = group_with(analysis, ("tensor", "flat", 1))
    assert conv2.contained_in == [(flat.index, 0, 9)] and flat.holds == [conv2.index]
    assert ("param", "head.weight", 1) in flat.dims
    with torch.no_grad():
        reference = gm(SMALL)
    for group in (conv, mix, conv2):  # permuting each group (in blocks where the flatten holds it) keeps gm
        torch.testing.assert_close(permuted_output(gm, analysis, group, SMALL), reference, rtol=1e-5, atol=1e-6)


def test_mixer_channels_follow_the_stem_rearrange_and_the_reduce() -> None:
    gm = growc.trace(Mixer().eval())
    analysis = growc.analyze_channels(gm, (IMAGE,))
    stem = group_with(analysis, ("tensor", "stem", 1))
    assert {("tensor", "rearrange", 2), ("tensor", "reduce", 1), ("param", "head.weight", 1)} <= set(stem.dims)
    # ChannelMixer's einops.rearrange moves d to axis 1, where its conv reads the channels
    assert {("tensor", "rearrange_3", 1), ("param", "blocks.0.1.up.weight", 1)} <= set(stem.dims)
    # TokenMixer's rearrange moves d to axis 1 too, but its MLP reads the tokens (the last axis): blocked there
    assert ("tensor", "rearrange_1", 1) in stem.dims
    assert "read by blocks.0.0.mlp.0 on another axis" in stem.blocked
    # the token MLP's output channels (tokens) are moved back to axis 1 by "b d n -> b n d"
    tokens = group_with(analysis, ("tensor", "blocks_0_0_mlp_2", 2))
    assert tokens is not None and ("tensor", "rearrange_2", 1) in tokens.dims


def test_rules_block_what_the_pattern_does_not_keep_elementary() -> None:
    class Blocked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.c3 = (nn.Conv2d(3, 4, 1) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inner = rearrange(self.c1(x), "b c h w -> b (h c) w")  # channels merged, not outermost
            reduced = einops.reduce(self.c2(x), "b c h w -> b h w", "sum")  # channels reduced away
            tiled = repeat(self.c3(x), "b c h w -> b (c r) h w", r=2)  # a repeated channel is no permutation
            return inner.sum() + reduced.sum() + tiled.sum()

    gm = growc.trace(Blocked())
    analysis = growc.analyze_channels(gm, (SMALL,))
    for conv, op in (("c1", "rearrange"), ("c2", "reduce"), ("c3", "repeat")):
        group = group_with(analysis, ("tensor", conv, 1))
        assert f"read by {op}, which has no channel rule" in group.blocked


def test_einops_rules_are_builtin_and_in_the_docs_table() -> None:
    rules = growc.op_rules()
    for call, target, rule in (
        ("function", einops.rearrange, EinopsRule),
        ("function", einops.reduce, EinopsRule),
        ("function", einops.repeat, EinopsRule),
        ("function", einops.einsum, EinopsOpaque),
        ("function", einops.pack, EinopsOpaque),
        ("function", einops.unpack, EinopsOpaque),
        ("module", Rearrange, EinopsRule),
        ("module", Reduce, EinopsRule),
    ):
        entry = rules[(call, target)]
        assert entry.builtin and isinstance(entry.rule, rule)
    assert "| einops rearrange | module | `einops.layers.torch.Rearrange` |" in rules_table()


# ---- the pattern rule, checked numerically ---------------------------------------------------------------------

SIZES = {"b": 2, "c": 3, "h": 4, "w": 5, "h1": 2, "h2": 2}


@st.composite
def rearrangements(draw: st.DrawFn) -> tuple[str, dict[str, int]]:
    """A rearrange of ``[2, 3, 4, 5]`` (channels ``c`` on axis 1): any order, adjacent axes merged at random, h
    optionally split on the left."""
    split = draw(st.booleans())
    names = ["b", "c", "h1", "h2", "w"] if split else ["b", "c", "h", "w"]
    order = draw(st.permutations(names))
    cuts = draw(st.lists(st.booleans(), min_size=len(names) - 1, max_size=len(names) - 1))
    groups = [[order[0]]]
    for cut, name in zip(cuts, order[1:], strict=True):
        groups[-1].append(name) if not cut else groups.append([name])
    right = " ".join(g[0] if len(g) == 1 else f"({' '.join(g)})" for g in groups)
    left = "b c (h1 h2) w" if split else "b c h w"
    return f"{left} -> {right}", ({"h1": 2} if split else {})


def block_index(perm: torch.Tensor, block: int) -> torch.Tensor:
    return (perm[:, None] * block + torch.arange(block)).flatten()


@settings(max_examples=60)
@given(rearrangements(), st.permutations(range(3)))
def test_the_pattern_rule_is_what_rearrange_does(case: tuple[str, dict[str, int]], perm_list: list[int]) -> None:
    """Where the rule puts channel axis 1, permuting the channels permutes that output axis (in blocks for a
    merge), and the parents' tensors concatenated there are the concatenated outputs (the lift); where it says
    nothing, the concatenation identity fails."""
    pattern, lengths = case
    x0, x1 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    where = parse_pattern(pattern, 4).where(1)
    out = rearrange(x0, pattern, **lengths)
    joined = rearrange(torch.cat([x0, x1], 1), pattern, **lengths)
    if where is None:
        for j in range(out.dim()):  # no output axis holds the parents side by side
            parts = torch.cat([out, rearrange(x1, pattern, **lengths)], j)
            assert parts.shape != joined.shape or not torch.equal(parts, joined)
        return
    how, j = where
    block = out.shape[j] // 3
    assert (how == "moved") == (block == 1)
    perm = torch.tensor(perm_list)
    torch.testing.assert_close(
        rearrange(x0[:, perm], pattern, **lengths), out.index_select(j, block_index(perm, block))
    )
    torch.testing.assert_close(joined, torch.cat([out, rearrange(x1, pattern, **lengths)], j))


@pytest.mark.parametrize(
    ("pattern", "rank", "where"),
    [
        ("b c ... -> b ... c", 4, ("moved", 3)),
        ("b ... -> b (...)", 4, ("merged", 1)),
        ("... c h w -> ... (h w c)", 4, None),  # merged, not outermost
        ("... c h w -> ... (h w c)", 5, ("moved", 1)),  # axis 1 is an ellipsis axis there
        ("b (c h) w -> b c h w", 3, None),  # the channel axis is composite on the left
        ("b c 1 w -> b w c", 4, ("moved", 2)),
        ("b c h w -> b c", 4, ("moved", 1)),  # reduce: h, w reduced away
        ("b c h w -> b h w", 4, None),
        ("b c -> b c 3", 2, ("moved", 1)),  # repeat: a new anonymous axis
        ("b c h w -> b h w c", 3, None),  # wrong rank: not a pattern for this input
        ("no arrow", 4, None),
    ],
)
def test_parsed_patterns(pattern: str, rank: int, where: tuple[str, int] | None) -> None:
    parsed = parse_pattern(pattern, rank)
    assert (parsed.where(1) if parsed is not None else None) == where


@pytest.mark.parametrize(
    ("pattern", "reduction"),
    [("b c h w -> b c", "mean"), ("b c (h h2) w -> b w c h", "max"), ("b c h w -> b (c h)", "sum")],
)
def test_reduce_keeps_the_channel_axis_where_the_rule_says(pattern: str, reduction: str) -> None:
    x0, x1 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    lengths = {"h2": 2} if "h2" in pattern else {}
    how, j = parse_pattern(pattern, 4).where(1)
    out0, out1 = (einops.reduce(x, pattern, reduction, **lengths) for x in (x0, x1))
    joined = einops.reduce(torch.cat([x0, x1], 1), pattern, reduction, **lengths)
    torch.testing.assert_close(joined, torch.cat([out0, out1], j))
    perm = torch.tensor([2, 0, 1])
    block = out0.shape[j] // 3
    assert (how == "moved") == (block == 1)
    torch.testing.assert_close(
        einops.reduce(x0[:, perm], pattern, reduction, **lengths), out0.index_select(j, block_index(perm, block))
    )


@settings(settings.get_profile("growc-ci"), max_examples=4, deadline=None)
@given(rearrangements())
def test_any_rearrange_between_convs_fuses_exactly(case: tuple[str, dict[str, int]]) -> None:
    pattern, lengths = case

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(60, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(rearrange(self.conv(x), pattern, **lengths).reshape(2, -1))

    x = torch.randn(2, 3, 4, 5)
    a, b = parents(Net)
    gm = growc.fuse([a, b], (x,), cross_init="zero")
    fallbacks = {f["node"] for f in gm.meta["growc"]["fuse"]["fallbacks"]}
    assert ("rearrange" in fallbacks) == (parse_pattern(pattern, 4).where(1) is None)
    with torch.no_grad():
        assert rel_error(a(x) + b(x), gm(x)) <= growc.exactness_tolerance(torch.float32)


# ---- channel analysis around einops: mixed-axis residual adds and tuple outputs block their groups -------------


def test_every_permutable_mixer_group_keeps_the_function() -> None:
    gm = growc.trace(Mixer().eval())
    analysis = growc.analyze_channels(gm, (IMAGE,))
    with torch.no_grad():
        reference = gm(IMAGE)
    for group in (g for g in analysis.groups if g.permutable):
        torch.testing.assert_close(permuted_output(gm, analysis, group, IMAGE), reference, rtol=1e-4, atol=1e-5)


def test_groups_read_by_pack_are_not_permutable() -> None:
    x = torch.randn(2, 3, 4)
    analysis = growc.analyze_channels(growc.trace(EveryOp().eval()), (x,))
    assert not group_with(analysis, ("tensor", "a", 2)).permutable
