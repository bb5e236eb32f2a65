"""Knowledge distillation with a temperature (Hinton, Vinyals and Dean, 2015)."""

from __future__ import annotations

import torch
from torch import Tensor

from torchcal._inputs.validation import check_floating, check_labels, check_positive_finite
from torchcal.dial.tempered import log_softmax

__all__ = ["distillation_loss"]


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    alpha: float = 0.5,
    labels: Tensor | None = None,
) -> Tensor:
    """``alpha * T^2 KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    ``teacher_T`` and ``student_T`` are ``softmax(logits / T)`` over the last dimension. The KL
    term is summed over classes and averaged over rows ("batchmean"; leading dimensions count as
    rows), and scaled by ``T^2`` so that its gradients keep their size as T changes. The
    cross-entropy uses the student's untempered logits and integer ``labels`` of the leading
    shape. The teacher is detached: gradients flow to the student only. Half-precision inputs
    are computed in float32.

    Args:
        student_logits: (..., K) logits of the model being trained.
        teacher_logits: (..., K) logits of the teacher, the same shape.
        temperature: T > 0, applied to both.
        alpha: the weight of the soft-target term, in [0, 1]; it must be 1 (soft targets only)
            unless ``labels`` are given.
        labels: integer class labels of the leading shape (...), for the cross-entropy term.

    Returns:
        The loss, a 0-dim tensor.

    Example:
        >>> student = torch.tensor([[1.0, 0.0, -1.0]])
        >>> teacher = torch.tensor([[3.0, 0.0, -3.0]])
        >>> round(float(distillation_loss(student, teacher, 2.0, alpha=1.0)), 4)
        0.7418
        >>> loss = distillation_loss(student, teacher, 2.0, labels=torch.tensor([0]))
        >>> round(float(loss), 4)
        0.5747
    """
    student = check_floating(student_logits, "student_logits")
    teacher = check_floating(teacher_logits, "teacher_logits")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student_logits of shape {tuple(student.shape)} and teacher_logits of shape "
            f"{tuple(teacher.shape)} must have the same shape"
        )
    if student.ndim == 0 or student.shape[-1] < 2 or student.numel() == 0:
        raise ValueError(
            f"logits must have shape (..., K) with K >= 2 classes and at least one row, got "
            f"{tuple(student.shape)}"
        )
    temperature = check_positive_finite(temperature, "temperature")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a real number in [0, 1], got {alpha!r}")
    if labels is None and alpha != 1:
        raise ValueError(
            f"alpha={alpha} mixes in a cross-entropy on labels, but labels is None; pass labels "
            "or set alpha=1.0 for the soft-target loss alone"
        )
    n_classes = student.shape[-1]
    compute = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    student = student.to(compute).reshape(-1, n_classes)
    teacher = teacher.detach().to(compute).reshape(-1, n_classes)

    log_student = log_softmax(student, temperature)
    log_teacher = log_softmax(teacher, temperature)
    p_teacher = log_teacher.exp()
    terms = torch.where(p_teacher > 0, p_teacher * (log_teacher - log_student), 0.0)
    soft = terms.sum() / len(student) * temperature**2
    if labels is None:
        return soft
    leading = tuple(student_logits.shape[:-1])
    if not isinstance(labels, Tensor) or tuple(labels.shape) != leading:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of shape {leading}, got {shape}")
    labels = check_labels(labels.reshape(-1), len(student), n_classes)
    if alpha == 1:
        return soft
    hard = torch.nn.functional.cross_entropy(student, labels)
    return alpha * soft + (1 - alpha) * hard
