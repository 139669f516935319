"""Training objectives: plain cross-entropy, Twin Network Augmentation, knowledge distillation, mutual learning.

Every objective maps ``(base_logits, partner_logits, labels)`` to one scalar whose gradient trains the
networks that produced the logits (``partner_logits`` is the twin's for tna / dml, the frozen teacher's for
kd, None for baseline). Logits are ``[B, num_classes]``, labels int64 ``[B]``.

Defaults and where they come from:

- ``tna``: CE(base) + CE(twin) + lambda * MSE(base logits, twin logits), the loss of Deckers et al. (2024),
  "Twin Network Augmentation: A Novel Training Strategy for Improved Spiking Neural Networks and Efficient
  Weight Quantization". The MSE is summed over the logits and averaged over the batch (``mse_reduction=
  "sum"``); ``"mean"`` averages over logits too (PyTorch's ``mse_loss`` default, num_classes times
  smaller). The trainer's default lambda, 0.005, was chosen on validation accuracy by a sweep
  (``benchmarks/tna_experiments.py lambda``); tune it with ``--tna-lambda``. No term is detached: the logit-matching gradient reaches both networks.
- ``kd``: Hinton et al. (2015): (1 - alpha) * CE(student) + alpha * T^2 * KL(teacher_T || student_T) with
  temperature T = 4 and alpha = 0.9, the values of the widely used settings of Hinton et al.'s follow-ups
  (e.g. Tian et al., 2020, "Contrastive Representation Distillation", for CIFAR).
- ``dml``: Zhang et al. (2018), "Deep Mutual Learning": each network minimizes its CE plus
  KL(other || self), with the other network's prediction a fixed target (detached); the two losses are
  summed so one backward trains both.
"""
import torch.nn.functional as F
from torch import Tensor

METHODS = ("baseline", "tna", "kd", "dml")
MSE_REDUCTIONS = ("sum", "mean")


def logit_mse(a: Tensor, b: Tensor, reduction: str = "sum") -> Tensor:
    """MSE between logits ``[B, K]``: summed over K and averaged over B ("sum"), or averaged over both."""
    if reduction not in MSE_REDUCTIONS:
        raise ValueError(f"mse reduction must be one of {MSE_REDUCTIONS}, got {reduction!r}")
    squared = (a.float() - b.float()).pow(2)
    return squared.sum(1).mean() if reduction == "sum" else squared.mean()


def tna_loss(base: Tensor, twin: Tensor, labels: Tensor, lam: float = 1.0, mse_reduction: str = "sum") -> Tensor:
    """CE(base) + CE(twin) + lam * MSE(base, twin); gradients reach both networks."""
    return F.cross_entropy(base, labels) + F.cross_entropy(twin, labels) + lam * logit_mse(base, twin, mse_reduction)


def kd_loss(student: Tensor, teacher: Tensor, labels: Tensor, temperature: float = 4.0, alpha: float = 0.9) -> Tensor:
    """(1 - alpha) * CE(student) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))."""
    soft = F.kl_div(F.log_softmax(student.float() / temperature, 1), F.log_softmax(teacher.float() / temperature, 1),
                    reduction="batchmean", log_target=True)
    return (1 - alpha) * F.cross_entropy(student, labels) + alpha * temperature ** 2 * soft


def dml_loss(a: Tensor, b: Tensor, labels: Tensor) -> Tensor:
    """Mutual learning: [CE(a) + KL(b || a)] + [CE(b) + KL(a || b)], each KL with the other side detached."""
    log_a, log_b = F.log_softmax(a.float(), 1), F.log_softmax(b.float(), 1)
    kl_a = F.kl_div(log_a, log_b.detach(), reduction="batchmean", log_target=True)
    kl_b = F.kl_div(log_b, log_a.detach(), reduction="batchmean", log_target=True)
    return F.cross_entropy(a, labels) + kl_a + F.cross_entropy(b, labels) + kl_b


def objective(method: str, base: Tensor, partner, labels: Tensor, *, tna_lambda: float = 1.0,
              mse_reduction: str = "sum", kd_temperature: float = 4.0, kd_alpha: float = 0.9) -> Tensor:
    """The training loss of ``method`` (one of ``METHODS``)."""
    if method == "baseline":
        return F.cross_entropy(base, labels)
    if method == "tna":
        return tna_loss(base, partner, labels, tna_lambda, mse_reduction)
    if method == "kd":
        return kd_loss(base, partner, labels, kd_temperature, kd_alpha)
    if method == "dml":
        return dml_loss(base, partner, labels)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def uses_twin(method: str) -> bool:
    """Whether the method co-trains a second network (the twin)."""
    return method in ("tna", "dml")


def accuracy_count(logits: Tensor, labels: Tensor) -> Tensor:
    """Number of correct top-1 predictions, as a 0-d int64 tensor (no device sync)."""
    return (logits.argmax(1) == labels).sum()


__all__ = ["METHODS", "MSE_REDUCTIONS", "accuracy_count", "dml_loss", "kd_loss", "logit_mse", "objective",
           "tna_loss", "uses_twin"]
