"""The runtime layer: template banks, the mixed and grid layers that generate their weights from banks, the
batched weight generation and the optimizer parameter groups. Depends on torch only."""
