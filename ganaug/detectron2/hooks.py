"""A trainer hook giving the adversaries (PGAN discriminator, ASDN, ASTN) their own optimizer.

detectron2's ``SimpleTrainer.run_step`` does one backward over the summed loss dict, calls
``after_backward`` on its hooks, then steps the detector's optimizer. This hook steps an
Adam optimizer over the adversaries' parameters in ``after_backward`` and then clears
their gradients (``grad = None``), so the detector's optimizer, which also holds them
when it was built from all model parameters, skips them: PyTorch optimizers ignore
parameters without a gradient. Under ``launch`` with DDP the gradients are already
all-reduced when the hook runs, so every process takes the same step.

The optimizer state is part of the trainer's checkpoint (``state_dict``/``load_state_dict``
are collected by detectron2's ``TrainerBase``).

detectron2's ``DefaultTrainer`` runs the step in an inner ``SimpleTrainer`` and does not
pass ``after_backward`` on to its own hooks, so :func:`register_adversary_hook` registers
the hook with the outer trainer (checkpointing) and the inner one (the call after the
backward). ``GanaugTrainer`` does this by itself.
"""

from __future__ import annotations

import logging

import torch
from detectron2.engine import HookBase
from detectron2.utils.events import get_event_storage
from torch import nn

__all__ = ["AdversaryOptimizerHook", "find_adversaries", "register_adversary_hook"]

logger = logging.getLogger(__name__)


def find_adversaries(model: nn.Module) -> dict[str, nn.Module]:
    """Adversary networks of every ganaug head inside ``model`` (DDP-wrapped or not).

    Returns:
        ``{"<module path>.<name>": network}``, empty when the model has no ganaug head.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    found = {}
    for path, module in model.named_modules():
        lister = getattr(module, "adversaries", None)
        if callable(lister) and getattr(module, "ganaug_iter", None) is not None:
            for name, net in lister().items():
                found[f"{path}.{name}" if path else name] = net
    return found


class AdversaryOptimizerHook(HookBase):
    """Steps the adversaries of a model with their own Adam optimizer after each backward.

    Args:
        model: the trainer's model (DDP-wrapped or not); built before the hook.
        base_lr: Adam learning rate.
        betas: Adam betas.
        weight_decay: Adam weight decay.

    Event storage: ``ganaug/adv_lr``, ``ganaug/adv_grad_norm`` (all adversaries together).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        base_lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        weight_decay: float = 0.0,
    ) -> None:
        nets = find_adversaries(model)
        if not nets:
            raise ValueError(
                "AdversaryOptimizerHook: the model has no ganaug ROI head with adversaries; "
                "set MODEL.ROI_HEADS.NAME to PerceptualGANROIHeads or AdversarialROIHeads"
            )
        if base_lr <= 0:
            raise ValueError(f"AdversaryOptimizerHook: base_lr must be > 0, got {base_lr}")
        self.networks = nets
        groups = [{"params": list(net.parameters()), "name": name} for name, net in nets.items()]
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.Adam(
            groups, lr=base_lr, betas=tuple(betas), weight_decay=weight_decay
        )
        logger.info("ganaug: own Adam optimizer (lr=%g) for %s", base_lr, ", ".join(sorted(nets)))

    @classmethod
    def from_config(cls, cfg, model: nn.Module) -> AdversaryOptimizerHook:
        s = cfg.SOLVER.GANAUG_ADV
        return cls(model, base_lr=s.BASE_LR, betas=tuple(s.BETAS), weight_decay=s.WEIGHT_DECAY)

    def after_backward(self) -> None:
        self.step()

    def step(self) -> None:
        """Step the adversaries on their current gradients, then clear those gradients."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
            if not torch.isfinite(norm):
                # Mirrors detectron2's FloatingPointError on a non-finite detector loss.
                raise FloatingPointError(
                    f"ganaug adversaries got a non-finite gradient norm ({float(norm)}) at "
                    f"iteration {getattr(self.trainer, 'iter', '?')}"
                )
            self.optimizer.step()
            try:
                storage = get_event_storage()
            except AssertionError:
                storage = None  # stepped by hand outside a trainer
            if storage is not None:
                storage.put_scalar("ganaug/adv_grad_norm", float(norm))
                storage.put_scalar(
                    "ganaug/adv_lr", self.optimizer.param_groups[0]["lr"], smoothing_hint=False
                )
        # None, not zero: the detector's optimizer must skip these parameters entirely
        # (a zero gradient would still apply its weight decay and momentum).
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "optimizer" not in state_dict:
            raise KeyError(
                f"AdversaryOptimizerHook.load_state_dict: expected key 'optimizer', got "
                f"{sorted(state_dict)}"
            )
        self.optimizer.load_state_dict(state_dict["optimizer"])


def register_adversary_hook(trainer, cfg) -> AdversaryOptimizerHook:
    """Create the hook from ``cfg`` and attach it so that it runs after every backward.

    Works with a ``DefaultTrainer`` (or subclass) and with a plain ``SimpleTrainer``.
    A second call on the same trainer is refused: it would step the adversaries twice.
    """
    for h in getattr(trainer, "_hooks", []):
        if isinstance(h, AdversaryOptimizerHook):
            raise ValueError("register_adversary_hook: this trainer already has the hook")
    from .roi_heads import track_original_sizes

    hook = AdversaryOptimizerHook.from_config(cfg, trainer.model)
    # A user's DefaultTrainer built its model without GanaugTrainer.build_model.
    track_original_sizes(trainer.model)
    trainer.register_hooks([hook])
    attach_to_inner_trainer(trainer, hook)
    return hook


def attach_to_inner_trainer(trainer, hook: AdversaryOptimizerHook) -> None:
    """Make a DefaultTrainer's inner step trainer call ``hook.after_backward``.

    Appended directly (not via ``register_hooks``) so that ``hook.trainer`` stays the
    outer trainer, whose checkpoint holds the hook's state.
    """
    inner = getattr(trainer, "_trainer", None)
    if inner is not None and hook not in inner._hooks:
        inner._hooks.append(hook)
