"""Evaluation: zero-shot classification (CA, top-1 / top-5), attack success rate, retrieval
(zeroshot); robust accuracy, the redirect and the book's verdicts (robustness)."""

from ubtlib.evaluation.robustness import backdoor_metrics, robust_accuracy, verdict
from ubtlib.evaluation.zeroshot import attack_success_rate, classifier, zero_shot

__all__ = ["attack_success_rate", "backdoor_metrics", "classifier", "robust_accuracy", "verdict", "zero_shot"]
