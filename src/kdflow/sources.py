"""Transfer from several sources: per strategy, what each source model gives on the new task.

The question it answers: what do the student's features lose against the teacher's on a new
task? Every source is compared with the first one (``transfer.source[0]``, the distilled
student by default) by the same paired test the report uses between models, on the same new-task
test images; each source's retention is against that source's own old-task accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from kdflow import stats

if TYPE_CHECKING:
    from kdflow.evaluate import Transfers

ROW_KEYS = ("old_task_accuracy", "retention", "old_task_drop")


def comparison_key(first: str, other: str) -> str:
    """``distilled_vs_teacher``: the same ``<a>_vs_<b>`` naming as the significance section."""
    return f"{first}_vs_{other}"


def source_table(
    by_source: Mapping[str, Transfers], strategies: Sequence[str], new_y: Tensor
) -> dict[str, Any]:
    """``{strategy: {source: {new_task_accuracy, old_task_accuracy, retention, old_task_drop},
    <first>_vs_<other>: paired test}}``, sources in ``transfer.source`` order."""
    sources = list(by_source)
    table: dict[str, Any] = {}
    for strategy in strategies:
        row: dict[str, Any] = {}
        for src, tr in by_source.items():
            kept = tr.retention[strategy]
            row[src] = {"new_task_accuracy": tr.new_task[strategy]["accuracy"],
                        **{k: kept.get(k) for k in ROW_KEYS}}  # fmt: skip
        a = by_source[sources[0]].logits[strategy].argmax(1)
        for other in sources[1:]:
            b = by_source[other].logits[strategy].argmax(1)
            row[comparison_key(sources[0], other)] = stats.compare(a, b, new_y)
        table[strategy] = row
    return table
