"""The graph layer: capture (``trace``), shape analysis and function comparison, the pass contract
(``Pipeline``) and graph drawing. Depends on the runtime layer."""
