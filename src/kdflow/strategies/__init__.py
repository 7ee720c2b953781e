"""Transfer strategies: one file each, registered by name.

A strategy is ``build(model: TransferNet, options: dict, train_x: Tensor) -> list[Phase]``;
it may freeze parts of the model. A strategy registered with ``from_scratch=True`` is handed a
freshly initialised model (no old-task retention to report).
"""

from __future__ import annotations

from kdflow.registry import Registry

STRATEGIES: Registry = Registry("transfer strategy", "kdflow.strategies")

# The from-scratch baseline: one DVC stage (transfer-scratch) that needs no source model, so
# changing a source never re-runs it; it is never listed in transfer.strategies.
BASELINE = "scratch"
