"""Each trained student's model card, rewritten by the herd once its evaluation results are known.

`lamini train` writes the card at export (base model, training data, training settings) with an
empty Evaluation section; the herd adds the student's fidelity, downstream and probe numbers
(lamini.herd.report.student_results) to it.
"""

from __future__ import annotations

import logging
from typing import Any

from lamini.herd.config import HerdConfig
from lamini.herd.plan import Layout, StudentPlan

log = logging.getLogger(__name__)


def write_cards(
    cfg: HerdConfig, plans: list[StudentPlan], trained: dict[str, Any], evals: dict[str, Any],
    dataset: dict[str, Any], lay: Layout,
) -> None:  # fmt: skip
    """Rewrite the model card of every student that trained, with its evaluation results."""
    from lamini.herd.report import collect, fidelity_pairs, student_results
    from lamini.models.card import add_evaluation

    docs = collect(evals, lay)
    fid = fidelity_pairs(docs["fidelity"])
    for p in plans:
        if "error" in trained.get(p.name, {"error": "not trained"}):
            continue
        results = student_results(p.name, docs, fid)
        if results:
            # `lamini train` wrote the card (base model, data, training); the herd adds the results.
            add_evaluation(p.model_dir, results)
