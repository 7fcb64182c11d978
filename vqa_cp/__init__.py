"""vqa_cp: debiased visual question answering on VQA-CP v2.

Bottom-up top-down model, the Learned-Mixin +H ensemble and the functional-entropy regulariser of
"Removing Bias in Multi-modal Classifiers: Regularization by Maximizing Functional Entropies".
"""

from vqa_cp.errors import VQAError

__all__ = ["VQAError"]
