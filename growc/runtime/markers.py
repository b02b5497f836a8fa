"""Step markers: the graph ops that bracket one forward of a model owning template banks.

:func:`add_step_markers` groups a graph's generated layers by the banks they read (:func:`growc.runtime.generation.
register`), holds the groups in a :class:`StepGroups` on the graph's ``growc_banks`` container and puts
:func:`begin_step` after the inputs and :func:`end_step` before the output. In between, the first layer of a group
that needs its weight generates the whole group's weights in one autograd node. The markers are graph nodes, so
they survive ``copy.deepcopy``, pickling, DDP and ``torch.compile`` (under which they do nothing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from growc.runtime.generation import Group, register
from growc.runtime.layers import GeneratedLayer

__all__ = [
    "STEP_MARKERS",
    "StepGroups",
    "add_step_markers",
    "begin_step",
    "end_step",
    "step_groups",
    "strip_step_markers",
]


class StepGroups:
    """The generation groups of one graph's layers: what its step markers begin and end.

    Held by the graph's ``growc_banks`` container as ``growc_banks.step_groups`` (a plain attribute, so it travels
    with ``deepcopy`` and pickling and stays out of the state dict); read it with :func:`step_groups`.
    """

    def __init__(self, groups: Sequence[Group] = ()) -> None:
        self.groups = tuple(groups)

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def begin_step(self) -> None:
        for group in self.groups:
            group.begin_step()

    def end_step(self) -> None:
        for group in self.groups:
            group.end_step()


_NONE = StepGroups()


def step_groups(banks: nn.Module) -> StepGroups:
    """The groups held by a ``growc_banks`` container (or by the ``growc_banks`` of a GraphModule); empty when its
    graph was never given step markers."""
    if "growc_banks" in banks._modules:
        banks = banks._modules["growc_banks"]
    return getattr(banks, "step_groups", _NONE)


def begin_step(banks: nn.Module) -> None:
    """Graph op at the start of a forward of a model that owns template banks (``growc_banks``).

    Until :func:`end_step`, the first layer that needs its weight generates the weights of every layer of its
    bank group in one autograd node and the others take theirs from it, so the backward is one node per group too.
    Under ``torch.compile`` it does nothing (each layer generates its own weight with the same ops).
    """
    if not torch.compiler.is_compiling():
        getattr(banks, "step_groups", _NONE).begin_step()


def end_step(banks: nn.Module) -> None:
    """Graph op before the output: the step's weights are dropped (the next forward builds a new graph)."""
    if not torch.compiler.is_compiling():
        getattr(banks, "step_groups", _NONE).end_step()


torch.fx.node.has_side_effect(begin_step)
torch.fx.node.has_side_effect(end_step)
STEP_MARKERS = (begin_step, end_step)


def strip_step_markers(graph: torch.fx.Graph) -> None:
    """Remove the step markers (and the ``growc_banks`` reads only they use) from ``graph``."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in STEP_MARKERS:
            source = node.args[0]
            graph.erase_node(node)
            if isinstance(source, torch.fx.Node) and not source.users:
                graph.erase_node(source)


def add_step_markers(gm: torch.fx.GraphModule) -> None:
    """Put :func:`begin_step` after the inputs and :func:`end_step` before the output of ``gm``'s graph when it
    owns ``growc_banks`` (and no markers otherwise), and bind its generated layers to their groups. Idempotent."""
    graph = gm.graph
    strip_step_markers(graph)
    if "growc_banks" not in gm._modules:
        return
    layers = [m for m in gm.modules() if isinstance(m, GeneratedLayer)]
    gm.growc_banks.step_groups = StepGroups(register(layers))  # this graph's layers, grouped by bank
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    output = next(n for n in reversed(nodes) if n.op == "output")
    with graph.inserting_after(inputs[-1]) if inputs else graph.inserting_before(nodes[0]):
        banks = graph.get_attr("growc_banks")
    with graph.inserting_after(banks):
        graph.call_function(begin_step, (banks,))
    with graph.inserting_before(output):
        graph.call_function(end_step, (banks,))
