"""Class-conditional GANs for minority-class oversampling, in plain PyTorch.

What is here:

* :class:`ConditionalGenerator` - DCGAN-style generator; the class enters through a learned
  embedding concatenated to the latent code (or not at all, for BAGAN, where the class lives
  in the latent distribution instead).
* :class:`ProjectionDiscriminator` (Miyato & Koyama 2018) and :class:`ACGANDiscriminator`
  (Odena et al. 2017; with ``fake_class=True`` it is BAGAN's K+1-way discriminator).
* Adversarial losses as functions and Modules: non-saturating, hinge and Wasserstein, plus
  the WGAN-GP gradient penalty (Gulrajani et al. 2017).
* :class:`GeneratorEMA` - exponential moving average of generator weights.
* :class:`ClassConditionalLatent` - BAGAN's per-class Gaussian over autoencoder codes
  (Mariani et al. 2018).
* :class:`CGANTrainer` - the training loop tying these together, with a checkpoint that
  restores every network and optimizer.

Images are float tensors in ``[-1, 1]``, shape ``(B, C, H, W)`` with ``H == W`` a power of two
times 4 (16, 32, 64, 128 ...).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

LOSS_KINDS = ("nonsaturating", "hinge", "wgan-gp")
ARCHS = ("projection", "acgan", "bagan")


def _num_stages(image_size: int) -> int:
    """Number of 2x up/down-sampling stages between 4x4 and ``image_size``."""
    stages = math.log2(image_size / 4) if image_size >= 8 else -1
    if stages < 1 or stages != int(stages):
        raise ValueError(
            f"image_size must be 4 * 2**k with k >= 1 (8, 16, 32, 64, 128 ...), got {image_size}"
        )
    return int(stages)


def _check_images(x: Tensor, channels: int, image_size: int, who: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels or x.shape[2:] != (image_size, image_size):
        raise ValueError(
            f"{who} expected images of shape (B, {channels}, {image_size}, {image_size}), "
            f"got {tuple(x.shape)}"
        )


def _check_labels(y: Tensor | None, batch: int, num_classes: int, who: str) -> None:
    if y is None:
        raise ValueError(f"{who} is class-conditional: labels of shape ({batch},) are required")
    if y.shape != (batch,):
        raise ValueError(f"{who} expected labels of shape ({batch},), got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{who} expected labels in [0, {num_classes - 1}], got range "
            f"[{int(y.min())}, {int(y.max())}]"
        )


# --------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------


class ConditionalGenerator(nn.Module):
    """DCGAN-style generator with an optional class embedding.

    Args:
        latent_dim: size of the latent code ``z``.
        num_classes: number of classes; ``0`` makes the generator unconditional (BAGAN
            decoder, where the class is carried by the latent distribution).
        image_size: output side length (4 * 2**k).
        channels: output channels (1 for greyscale).
        base_width: channels of the last hidden stage; earlier stages double it.
        embed_dim: class-embedding size (default: ``latent_dim``).

    Shape:
        - z: ``(B, latent_dim)``
        - labels: ``(B,)`` int64 in ``[0, num_classes)`` (ignored when unconditional)
        - output: ``(B, channels, image_size, image_size)`` in ``[-1, 1]``
    """

    def __init__(
        self,
        *,
        latent_dim: int = 128,
        num_classes: int = 0,
        image_size: int = 64,
        channels: int = 1,
        base_width: int = 32,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        stages = _num_stages(image_size)
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        embed_dim = latent_dim if embed_dim is None else embed_dim
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes > 0 else None
        in_dim = latent_dim + (embed_dim if num_classes > 0 else 0)
        width = base_width * 2 ** (stages - 1)
        self.fc = nn.Linear(in_dim, width * 16)
        self.fc_norm = nn.BatchNorm2d(width)
        self._width0 = width
        blocks = []
        for _ in range(stages - 1):
            blocks += [
                nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        blocks += [nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"ConditionalGenerator expected z of shape (B, {self.latent_dim}), "
                f"got {tuple(z.shape)}"
            )
        if self.embed is not None:
            _check_labels(labels, z.shape[0], self.num_classes, "ConditionalGenerator")
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.fc(z).view(z.shape[0], self._width0, 4, 4)
        h = F.relu(self.fc_norm(h))
        return self.blocks(h)


class _DiscriminatorBody(nn.Module):
    """Strided-conv feature extractor shared by the discriminators and the BAGAN encoder.

    Shape:
        - x: ``(B, channels, image_size, image_size)``
        - output: ``(B, feature_dim)`` (sum-pooled last feature map)
    """

    def __init__(
        self, *, image_size: int, channels: int, base_width: int, spectral_norm: bool
    ) -> None:
        super().__init__()
        stages = _num_stages(image_size)
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        in_ch, width = channels, base_width
        for _ in range(stages):
            layers += [sn(nn.Conv2d(in_ch, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            in_ch, width = width, width * 2
        # A stride-1 conv at 4x4 gives the head some spatial context before pooling.
        layers += [sn(nn.Conv2d(in_ch, in_ch, 3, padding=1)), nn.LeakyReLU(0.2)]
        self.layers = nn.Sequential(*layers)
        self.feature_dim = in_ch
        self.image_size = image_size
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, self.channels, self.image_size, type(self).__name__)
        # Sum pooling (not mean), as in the projection-discriminator paper: keeps the
        # magnitude of the evidence proportional to the area.
        return self.layers(x).sum(dim=(2, 3))


class ProjectionDiscriminator(nn.Module):
    """Projection discriminator: ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>``.

    Shape:
        - x: ``(B, channels, image_size, image_size)``
        - labels: ``(B,)`` int64
        - output: ``(B,)`` real/fake logits
    """

    def __init__(
        self,
        *,
        num_classes: int,
        image_size: int = 64,
        channels: int = 1,
        base_width: int = 32,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ProjectionDiscriminator needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.body = _DiscriminatorBody(
            image_size=image_size,
            channels=channels,
            base_width=base_width,
            spectral_norm=spectral_norm,
        )
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        self.linear = sn(nn.Linear(self.body.feature_dim, 1))
        self.embed = sn(nn.Embedding(num_classes, self.body.feature_dim))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        _check_labels(labels, x.shape[0], self.num_classes, "ProjectionDiscriminator")
        h = self.body(x)
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)


class ACGANDiscriminator(nn.Module):
    """Auxiliary-classifier discriminator.

    With ``fake_class=False`` (ACGAN) it returns a real/fake logit and ``num_classes`` class
    logits. With ``fake_class=True`` (BAGAN) there is no separate real/fake head: the class
    head has ``num_classes + 1`` outputs, the last meaning "generated".

    Shape:
        - x: ``(B, channels, image_size, image_size)``
        - output: ``(adv_logits (B,), class_logits (B, K))`` or, with ``fake_class``,
          ``(None, class_logits (B, K + 1))``
    """

    def __init__(
        self,
        *,
        num_classes: int,
        image_size: int = 64,
        channels: int = 1,
        base_width: int = 32,
        spectral_norm: bool = True,
        fake_class: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fake_class = fake_class
        self.body = _DiscriminatorBody(
            image_size=image_size,
            channels=channels,
            base_width=base_width,
            spectral_norm=spectral_norm,
        )
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        self.adv = None if fake_class else sn(nn.Linear(self.body.feature_dim, 1))
        self.cls = nn.Linear(self.body.feature_dim, num_classes + int(fake_class))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
        h = self.body(x)
        adv = None if self.adv is None else self.adv(h).squeeze(1)
        return adv, self.cls(h)


class LatentEncoder(nn.Module):
    """BAGAN encoder: discriminator body plus a linear map to the latent space.

    Shape:
        - x: ``(B, channels, image_size, image_size)``
        - output: ``(B, latent_dim)``
    """

    def __init__(self, *, latent_dim: int, image_size: int, channels: int, base_width: int):
        super().__init__()
        self.body = _DiscriminatorBody(
            image_size=image_size, channels=channels, base_width=base_width, spectral_norm=False
        )
        self.fc = nn.Linear(self.body.feature_dim, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")


def d_adversarial_loss(real_logits: Tensor, fake_logits: Tensor, *, kind: str) -> Tensor:
    """Discriminator loss on real and fake logits.

    ``nonsaturating``: softplus(-real) + softplus(fake) (= BCE); ``hinge``:
    relu(1 - real) + relu(1 + fake); ``wgan-gp``: fake - real (add :func:`gradient_penalty`).

    Shape:
        - real_logits: ``(B,)``; fake_logits: ``(B',)``; output: scalar
    """
    _check_kind(kind)
    if kind == "nonsaturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return fake_logits.mean() - real_logits.mean()


def g_adversarial_loss(fake_logits: Tensor, *, kind: str) -> Tensor:
    """Generator loss on the discriminator's logits for generated images.

    ``nonsaturating``: softplus(-fake); ``hinge`` and ``wgan-gp``: -fake.

    Shape:
        - fake_logits: ``(B,)``; output: scalar
    """
    _check_kind(kind)
    if kind == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    return -fake_logits.mean()


class AdversarialLoss(nn.Module):
    """Module form of :func:`d_adversarial_loss` / :func:`g_adversarial_loss`.

    ``forward(real_logits, fake_logits)`` is the discriminator loss; pass ``real_logits=None``
    for the generator loss.
    """

    def __init__(self, *, kind: str = "hinge") -> None:
        super().__init__()
        _check_kind(kind)
        self.kind = kind

    def forward(self, real_logits: Tensor | None, fake_logits: Tensor) -> Tensor:
        if real_logits is None:
            return g_adversarial_loss(fake_logits, kind=self.kind)
        return d_adversarial_loss(real_logits, fake_logits, kind=self.kind)


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    *,
    target: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP penalty ``E[(||grad_x critic(x_hat)||_2 - target)^2]`` on random interpolates.

    Args:
        critic: maps images ``(B, C, H, W)`` to scores ``(B,)``; bind labels with a lambda for
            conditional critics.
        real, fake: image batches of the same shape.
        target: the gradient norm the penalty pulls towards (1 in the paper).
        generator: optional RNG for the interpolation weights (reproducible tests).

    Shape:
        - real, fake: ``(B, C, H, W)``; output: scalar
    """
    if real.shape != fake.shape:
        raise ValueError(
            f"gradient_penalty expected real and fake of the same shape, got "
            f"{tuple(real.shape)} and {tuple(fake.shape)}"
        )
    alpha = torch.rand(
        (real.shape[0],) + (1,) * (real.dim() - 1),
        generator=generator,
        device=real.device,
        dtype=real.dtype,
    )
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grads,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grads.flatten(1).norm(2, dim=1)
    return ((norms - target) ** 2).mean()


class GradientPenalty(nn.Module):
    """Module form of :func:`gradient_penalty`; ``weight`` scales the result."""

    def __init__(self, *, weight: float = 10.0, target: float = 1.0) -> None:
        super().__init__()
        self.weight = weight
        self.target = target

    def forward(self, critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
        return self.weight * gradient_penalty(critic, real, fake, target=self.target)


# --------------------------------------------------------------------------------------
# EMA and BAGAN latent
# --------------------------------------------------------------------------------------


class GeneratorEMA(nn.Module):
    """Exponential moving average of a generator's weights (buffers are copied as-is).

    ``update(model)`` after each generator step; sample from ``ema.model``.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)

    def forward(self, *args, **kwargs) -> Tensor:
        return self.model(*args, **kwargs)


class ClassConditionalLatent(nn.Module):
    """BAGAN's class-conditional latent: one multivariate Gaussian per class over the
    autoencoder's codes.

    Shape:
        - fit codes: ``(N, latent_dim)``, labels ``(N,)``
        - sample labels: ``(B,)`` -> ``(B, latent_dim)``
    """

    def __init__(self, *, num_classes: int, latent_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.register_buffer("mean", torch.zeros(num_classes, latent_dim))
        self.register_buffer("chol", torch.eye(latent_dim).repeat(num_classes, 1, 1))

    @torch.no_grad()
    def fit(self, codes: Tensor, labels: Tensor, *, shrinkage: float = 0.1) -> None:
        """Estimate per-class mean and covariance; shrinks the covariance towards its diagonal
        so that a class with fewer samples than dimensions still gets a valid Gaussian."""
        for k in range(self.num_classes):
            ck = codes[labels == k].double()
            if len(ck) == 0:
                raise ValueError(f"ClassConditionalLatent.fit: class {k} has no samples")
            mu = ck.mean(0)
            if len(ck) > 1:
                cov = torch.cov(ck.T)
            else:
                cov = torch.eye(self.latent_dim, dtype=torch.float64)
            cov = (1 - shrinkage) * cov + shrinkage * torch.diag(torch.diag(cov))
            cov = cov + 1e-4 * torch.eye(self.latent_dim, dtype=torch.float64)
            self.mean[k] = mu.float()
            self.chol[k] = torch.linalg.cholesky(cov).float()

    def sample(self, labels: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(
            labels.shape[0], self.latent_dim, generator=generator, device=self.mean.device
        )
        return self.mean[labels] + torch.einsum("bij,bj->bi", self.chol[labels], eps)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class CGANConfig:
    """Hyper-parameters of :class:`CGANTrainer` (every field is a YAML key)."""

    arch: str = "projection"  # projection | acgan | bagan
    loss: str = "hinge"  # nonsaturating | hinge | wgan-gp (bagan always uses its K+1 CE)
    image_size: int = 64
    channels: int = 1
    latent_dim: int = 64
    g_width: int = 32
    d_width: int = 32
    spectral_norm: bool = True
    epochs: int = 20
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    n_critic: int = 1  # discriminator steps per generator step
    gp_weight: float = 10.0
    acgan_weight: float = 1.0  # weight of the auxiliary class loss
    ema_decay: float = 0.999
    ae_epochs: int = 10  # BAGAN autoencoder pre-training
    class_balanced: bool = False  # sample real batches class-balanced (minorities seen more)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"CGANConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        _check_kind(self.loss)
        _num_stages(self.image_size)
        self.betas = tuple(self.betas)


class CGANTrainer:
    """Trains a class-conditional GAN on an in-memory image set.

    Args:
        num_classes: number of classes.
        config: a :class:`CGANConfig`.
        device: torch device.
        seed: RNG seed for weights and sampling.

    ``fit(images, labels)`` trains, ``sample(labels)`` draws from the EMA generator,
    ``state_dict`` / ``load_state_dict`` restore everything (networks, EMA, optimizers,
    BAGAN latent, epoch).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        config: CGANConfig | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.cfg = config or CGANConfig()
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.seed = seed
        torch.manual_seed(seed)
        cfg = self.cfg
        bagan = cfg.arch == "bagan"
        self.generator = ConditionalGenerator(
            latent_dim=cfg.latent_dim,
            num_classes=0 if bagan else num_classes,
            image_size=cfg.image_size,
            channels=cfg.channels,
            base_width=cfg.g_width,
        ).to(self.device)
        common = dict(image_size=cfg.image_size, channels=cfg.channels, base_width=cfg.d_width)
        if cfg.arch == "projection":
            self.discriminator: nn.Module = ProjectionDiscriminator(
                num_classes=num_classes, spectral_norm=cfg.spectral_norm, **common
            )
        else:
            self.discriminator = ACGANDiscriminator(
                num_classes=num_classes,
                spectral_norm=cfg.spectral_norm and not bagan,
                fake_class=bagan,
                **common,
            )
        self.discriminator.to(self.device)
        self.latent = (
            ClassConditionalLatent(num_classes=num_classes, latent_dim=cfg.latent_dim).to(
                self.device
            )
            if bagan
            else None
        )
        self.ema = GeneratorEMA(self.generator, decay=cfg.ema_decay)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr_d, betas=cfg.betas)
        self.epoch = 0
        self.history: list[dict] = []
        self._rng = torch.Generator().manual_seed(seed)

    # -- sampling ------------------------------------------------------------------------

    def _latent(self, labels: Tensor) -> Tensor:
        if self.latent is not None:
            return self.latent.sample(labels, generator=None)
        return torch.randn(labels.shape[0], self.cfg.latent_dim, device=self.device)

    def _gen(self, g: nn.Module, labels: Tensor) -> Tensor:
        z = self._latent(labels)
        return g(z) if self.latent is not None else g(z, labels)

    @torch.no_grad()
    def sample(self, labels: Tensor, *, batch_size: int = 256, use_ema: bool = True) -> Tensor:
        """Generate one image per label.

        Shape:
            - labels: ``(N,)`` int64; output: ``(N, C, H, W)`` float in ``[-1, 1]`` on CPU
        """
        labels = labels.to(self.device).long()
        _check_labels(labels, labels.shape[0], self.num_classes, "CGANTrainer.sample")
        g = self.ema.model if use_ema else self.generator
        was_training = g.training
        g.eval()
        out = [
            self._gen(g, labels[i : i + batch_size]).cpu()
            for i in range(0, len(labels), batch_size)
        ]
        g.train(was_training)
        if not out:
            return torch.empty(0, self.cfg.channels, self.cfg.image_size, self.cfg.image_size)
        return torch.cat(out)

    # -- training ------------------------------------------------------------------------

    def _batches(self, labels: Tensor, n_steps: int) -> list[Tensor]:
        n = len(labels)
        bs = min(self.cfg.batch_size, n)
        if self.cfg.class_balanced:
            counts = torch.bincount(labels, minlength=self.num_classes).double()
            w = (1.0 / counts.clamp(min=1))[labels]
            idx = torch.multinomial(w, n_steps * bs, replacement=True, generator=self._rng)
        else:
            reps = math.ceil(n_steps * bs / n)
            idx = torch.cat([torch.randperm(n, generator=self._rng) for _ in range(reps)])
        return list(idx[: n_steps * bs].view(n_steps, bs))

    def _pretrain_autoencoder(self, images: Tensor, labels: Tensor) -> None:
        """BAGAN step 1: train encoder + decoder(=generator) as an autoencoder, then fit the
        class-conditional latent and initialise the discriminator body from the encoder."""
        cfg = self.cfg
        enc = LatentEncoder(
            latent_dim=cfg.latent_dim,
            image_size=cfg.image_size,
            channels=cfg.channels,
            base_width=cfg.d_width,
        ).to(self.device)
        opt = torch.optim.Adam(list(enc.parameters()) + list(self.generator.parameters()), lr=1e-3)
        steps = max(1, math.ceil(len(images) / cfg.batch_size))
        for ep in range(cfg.ae_epochs):
            total = 0.0
            for idx in self._batches(labels, steps):
                x = images[idx].to(self.device)
                loss = F.mse_loss(self.generator(enc(x)), x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            logger.debug("BAGAN autoencoder epoch %d: mse %.4f", ep, total / steps)
        enc.eval()
        with torch.no_grad():
            codes = torch.cat(
                [enc(images[i : i + 256].to(self.device)) for i in range(0, len(images), 256)]
            )
        self.latent.fit(codes, labels.to(self.device))
        self.discriminator.body.load_state_dict(enc.body.state_dict())
        self.ema = GeneratorEMA(self.generator, decay=cfg.ema_decay)
        logger.info("BAGAN: autoencoder pre-trained for %d epochs", cfg.ae_epochs)

    def _d_step(self, x: Tensor, y: Tensor) -> dict:
        cfg = self.cfg
        with torch.no_grad():
            y_fake = y[torch.randperm(len(y), device=y.device)]
            fake = self._gen(self.generator, y_fake)
        logs = {}
        if cfg.arch == "projection":
            real_logits = self.discriminator(x, y)
            fake_logits = self.discriminator(fake, y_fake)
            loss = d_adversarial_loss(real_logits, fake_logits, kind=cfg.loss)
            if cfg.loss == "wgan-gp":
                gp = gradient_penalty(lambda t: self.discriminator(t, y), x, fake)
                loss = loss + cfg.gp_weight * gp
                logs["gp"] = float(gp.detach())
        elif cfg.arch == "acgan":
            adv_r, cls_r = self.discriminator(x)
            adv_f, cls_f = self.discriminator(fake)
            loss = d_adversarial_loss(adv_r, adv_f, kind=cfg.loss)
            loss = loss + cfg.acgan_weight * (
                F.cross_entropy(cls_r, y) + F.cross_entropy(cls_f, y_fake)
            )
            if cfg.loss == "wgan-gp":
                gp = gradient_penalty(lambda t: self.discriminator(t)[0], x, fake)
                loss = loss + cfg.gp_weight * gp
                logs["gp"] = float(gp.detach())
        else:  # bagan: K+1-way classification, generated images belong to class K
            _, cls_r = self.discriminator(x)
            _, cls_f = self.discriminator(fake)
            fake_target = torch.full_like(y_fake, self.num_classes)
            loss = F.cross_entropy(cls_r, y) + F.cross_entropy(cls_f, fake_target)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        logs["loss_d"] = float(loss.detach())
        return logs

    def _g_step(self, y: Tensor) -> dict:
        cfg = self.cfg
        fake = self._gen(self.generator, y)
        if cfg.arch == "projection":
            loss = g_adversarial_loss(self.discriminator(fake, y), kind=cfg.loss)
        elif cfg.arch == "acgan":
            adv, cls = self.discriminator(fake)
            loss = g_adversarial_loss(adv, kind=cfg.loss) + cfg.acgan_weight * F.cross_entropy(
                cls, y
            )
        else:
            _, cls = self.discriminator(fake)
            loss = F.cross_entropy(cls, y)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.ema.update(self.generator)
        return {"loss_g": float(loss.detach())}

    def fit(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        epochs: int | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None,
    ) -> list[dict]:
        """Train for ``epochs`` (default ``config.epochs``) more epochs.

        Shape:
            - images: ``(N, C, H, W)`` float in ``[-1, 1]``; labels: ``(N,)`` int64
        """
        cfg = self.cfg
        _check_images(images, cfg.channels, cfg.image_size, "CGANTrainer.fit")
        _check_labels(labels, images.shape[0], self.num_classes, "CGANTrainer.fit")
        labels = labels.long()
        if self.latent is not None and self.epoch == 0:
            self._pretrain_autoencoder(images, labels)
        epochs = cfg.epochs if epochs is None else epochs
        steps = max(1, math.ceil(len(images) / cfg.batch_size))
        self.generator.train()
        self.discriminator.train()
        for _ in range(epochs):
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            for i, idx in enumerate(self._batches(labels, steps * cfg.n_critic)):
                x, y = images[idx].to(self.device), labels[idx].to(self.device)
                logs = self._d_step(x, y)
                if (i + 1) % cfg.n_critic == 0:
                    logs.update(self._g_step(y))
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
            self.epoch += 1
            rec = {k: v / steps for k, v in sums.items()}
            rec.update(epoch=self.epoch, seconds=time.perf_counter() - t0)
            self.history.append(rec)
            logger.debug("cGAN epoch %d: %s", self.epoch, rec)
            if on_epoch_end is not None:
                on_epoch_end(self.epoch, rec)
        return self.history

    # -- checkpoint ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "config": asdict(self.cfg),
            "num_classes": self.num_classes,
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.model.state_dict(),
            "latent": None if self.latent is None else self.latent.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "rng": self._rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_classes") != self.num_classes:
            raise ValueError(
                f"checkpoint is for {state.get('num_classes')} classes, trainer has "
                f"{self.num_classes}"
            )
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.model.load_state_dict(state["ema"])
        if self.latent is not None:
            self.latent.load_state_dict(state["latent"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self._rng.set_state(state["rng"])

    @classmethod
    def from_checkpoint(cls, state: dict, *, device: str | torch.device = "cpu") -> CGANTrainer:
        cfg = dict(state["config"])
        trainer = cls(num_classes=state["num_classes"], config=CGANConfig(**cfg), device=device)
        trainer.load_state_dict(state)
        return trainer
