"""Student quality: zero-shot multiple-choice benchmarks, chat behaviour beside the teacher, held-out agreement."""

from edgedistil.eval.run import SUBSETS, run_eval

__all__ = ["SUBSETS", "run_eval"]
