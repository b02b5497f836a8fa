"""The runtime layer: template banks, the mixed and grid layers that generate their weights from banks, the
batched weight generation, the step markers and the optimizer parameter groups. Depends on torch only.

Modules, each importing only those above it: :mod:`~growc.runtime.precision` (the dtype and autocast rule),
:mod:`~growc.runtime.bank` (:class:`TemplateBank`), :mod:`~growc.runtime.generation` (groups of banks and their
batched generation), :mod:`~growc.runtime.layers` (mixed and grid layers), :mod:`~growc.runtime.markers`
(``begin_step``/``end_step`` graph ops); :mod:`~growc.runtime.groups` (optimizer parameter groups) reads banks only.
"""
