"""Evaluation: zero-shot classification (CA, top-1 / top-5), attack success rate, retrieval."""

from ubtlib.evaluation.zeroshot import attack_success_rate, backdoor_metrics, classifier, zero_shot

__all__ = ["attack_success_rate", "backdoor_metrics", "classifier", "zero_shot"]
