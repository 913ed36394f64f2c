"""Pix2PixHD: label-map to image translation (Wang et al., CVPR 2018), in plain PyTorch.

Pieces, each usable on its own:

- :class:`GlobalGenerator` (G1) and :class:`LocalEnhancerGenerator` (G2 wrapping G1) map an
  encoded label map to an RGB image in ``[-1, 1]``.
- :class:`MultiscaleDiscriminator`: ``num_d`` PatchGANs on progressively average-pooled
  inputs; each returns its intermediate features for the feature-matching loss.
- :func:`lsgan_loss` / :class:`LSGANLoss`, :func:`feature_matching_loss` /
  :class:`FeatureMatchingLoss`, :class:`VGGPerceptualLoss` (weights only from a file path).
- :func:`instance_edges`, :class:`InstanceFeatureEncoder` with instance-wise average pooling,
  and :class:`InstanceFeatureBank` (k-means per class) to sample features at generation time.
- :func:`encode_input` builds the generator input (one-hot labels [+ edges] [+ features]).
- :func:`pix2pixhd_config` returns the ``"paper"`` or ``"slim"`` preset; :func:`build_generator`
  and :func:`build_discriminator` build the nets from it.

Sizes that are not a multiple of the generator's total downsampling factor are reflect-padded
(``size_mode="pad"``, default) and the output cropped back, or rejected (``size_mode="error"``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "GlobalGenerator",
    "LocalEnhancerGenerator",
    "NLayerDiscriminator",
    "MultiscaleDiscriminator",
    "lsgan_loss",
    "LSGANLoss",
    "feature_matching_loss",
    "FeatureMatchingLoss",
    "VGGPerceptualLoss",
    "instance_edges",
    "instance_average_pool",
    "InstanceFeatureEncoder",
    "InstanceFeatureBank",
    "encode_input",
    "pix2pixhd_config",
    "build_generator",
    "build_discriminator",
    "PRESETS",
]


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, dict] = {
    # Wang et al. 2018, Sec. 3.2 / 4: G1 with 4 downsamplings and 9 residual blocks at 64
    # base filters, one local enhancer with 3 blocks, 3 discriminator scales, lambda = 10.
    "paper": dict(
        ngf=64,
        n_downsample=4,
        n_blocks=9,
        n_local_enhancers=1,
        n_blocks_local=3,
        ndf=64,
        n_layers_d=3,
        num_d=3,
        lambda_feat=10.0,
        lambda_vgg=10.0,
        norm="instance",
    ),
    # About 8M generator parameters (3 downsamplings to 256 channels, 6 blocks) and a 2-scale
    # discriminator: trains on 2 CPU cores at 120x160 in well under a second per image.
    "slim": dict(
        ngf=32,
        n_downsample=3,
        n_blocks=6,
        n_local_enhancers=0,
        n_blocks_local=3,
        ndf=32,
        n_layers_d=3,
        num_d=2,
        lambda_feat=10.0,
        lambda_vgg=10.0,
        norm="instance",
    ),
}


def pix2pixhd_config(preset: str = "slim", **overrides) -> dict:
    """Return a copy of a preset, with keyword overrides applied.

    Raises:
        ValueError: unknown preset name or unknown override key.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown Pix2PixHD preset {preset!r}; expected one of {sorted(PRESETS)}.")
    cfg = dict(PRESETS[preset])
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(
            f"Unknown Pix2PixHD option(s) {sorted(unknown)} for preset {preset!r}; "
            f"known options are {sorted(cfg)}."
        )
    cfg.update(overrides)
    return cfg


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {kind!r}; expected 'instance', 'batch' or 'none'.")


# ----------------------------------------------------------------------------- generators


class ResnetBlock(nn.Module):
    """Two reflect-padded 3x3 convolutions with a skip connection. Shape: (B, C, H, W) kept."""

    def __init__(self, channels: int, *, norm: str = "instance"):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(norm, channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(norm, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _check_input(x: Tensor, in_channels: int, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects input of shape (B, {in_channels}, H, W); got {tuple(x.shape)}."
        )


def _pad_to_multiple(x: Tensor, factor: int, mode: str, name: str) -> tuple[Tensor, int, int]:
    """Pad H and W up to a multiple of ``factor`` (or raise). Returns (padded, H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % factor, (-w) % factor
    if ((h + ph) // factor) * ((w + pw) // factor) < 2:
        # Instance norm at the bottleneck needs more than one spatial element.
        raise ValueError(
            f"{name}: input size {h}x{w} is too small for the downsampling factor {factor}; "
            f"it needs at least {factor}x{2 * factor} pixels."
        )
    if ph == 0 and pw == 0:
        return x, h, w
    if mode == "error":
        raise ValueError(
            f"{name}: input size {h}x{w} is not a multiple of the downsampling factor {factor}; "
            f"resize or crop to a multiple of {factor}, or use size_mode='pad'."
        )
    # Replicate rather than zeros: a zero one-hot vector would be a label that never exists.
    # Reflection would need pad < size, which fails on tiny inputs.
    return F.pad(x, (0, pw, 0, ph), mode="replicate"), h, w


class GlobalGenerator(nn.Module):
    """Pix2PixHD global generator G1: conv front-end, downsampling, residual blocks, upsampling.

    Args:
        in_channels: channels of the encoded label map (see :func:`encode_input`).
        out_channels: image channels (3).
        ngf: filters of the first layer; doubled at each downsampling.
        n_downsample: number of stride-2 downsamplings (factor ``2**n_downsample``).
        n_blocks: residual blocks at the bottleneck.
        norm: "instance" (paper), "batch" or "none".
        size_mode: "pad" (pad to a multiple of the factor, crop output) or "error".

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, H, W), values in [-1, 1];
          :meth:`features` returns (B, ngf, H, W) before the output layer.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int = 3,
        ngf: int = 64,
        n_downsample: int = 4,
        n_blocks: int = 9,
        norm: str = "instance",
        size_mode: str = "pad",
    ):
        super().__init__()
        if size_mode not in ("pad", "error"):
            raise ValueError(f"size_mode must be 'pad' or 'error'; got {size_mode!r}.")
        self.in_channels = in_channels
        self.size_mode = size_mode
        self.factor = 2**n_downsample
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7),
            _norm(norm, ngf),
            nn.ReLU(True),
        ]
        ch = ngf
        for _ in range(n_downsample):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), _norm(norm, ch * 2)]
            layers.append(nn.ReLU(True))
            ch *= 2
        layers += [ResnetBlock(ch, norm=norm) for _ in range(n_blocks)]
        for _ in range(n_downsample):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(norm, ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh())

    def features(self, x: Tensor) -> Tensor:
        """Last feature map before the output layer (used by the local enhancer)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels, type(self).__name__)
        x, h, w = _pad_to_multiple(x, self.factor, self.size_mode, type(self).__name__)
        return self.head(self.body(x))[..., :h, :w]


def _downsample(x: Tensor) -> Tensor:
    # Paper/official choice: 3x3 average pool, stride 2, padding excluded from the mean.
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


class LocalEnhancerGenerator(nn.Module):
    """Pix2PixHD coarse-to-fine generator: G1 on a 2x-downsampled input, G2 branches on top.

    Each local enhancer halves the base filters of the one inside it, so the global branch
    runs with ``ngf * 2**n_local_enhancers`` filters on an input downsampled that many times.

    Args:
        in_channels, out_channels, norm, size_mode: as :class:`GlobalGenerator`.
        ngf: filters of the outermost (full-resolution) enhancer.
        n_downsample, n_blocks: of the global generator G1.
        n_local_enhancers: number of enhancers (1 in the paper for 2048x1024).
        n_blocks_local: residual blocks in each enhancer.

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, H, W), values in [-1, 1]
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int = 3,
        ngf: int = 32,
        n_downsample: int = 4,
        n_blocks: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        norm: str = "instance",
        size_mode: str = "pad",
    ):
        super().__init__()
        if n_local_enhancers < 1:
            raise ValueError(f"n_local_enhancers must be >= 1; got {n_local_enhancers}.")
        if size_mode not in ("pad", "error"):
            raise ValueError(f"size_mode must be 'pad' or 'error'; got {size_mode!r}.")
        self.in_channels = in_channels
        self.size_mode = size_mode
        self.n_local = n_local_enhancers
        self.factor = 2 ** (n_downsample + n_local_enhancers)
        # G1 keeps its own output layer: the paper trains G1 alone first (at the coarse
        # resolution, :meth:`forward_global`); the enhancers then consume its last features
        # and the layer goes unused.
        self.global_g = GlobalGenerator(
            in_channels=in_channels,
            out_channels=out_channels,
            ngf=ngf * 2**n_local_enhancers,
            n_downsample=n_downsample,
            n_blocks=n_blocks,
            norm=norm,
            size_mode="error",
        )
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        # Enhancer n (1 = innermost) works at 1/2**(n_local - n) of the input resolution.
        for n in range(1, n_local_enhancers + 1):
            f = ngf * 2 ** (n_local_enhancers - n)
            self.down.append(
                nn.Sequential(
                    nn.ReflectionPad2d(3),
                    nn.Conv2d(in_channels, f, 7),
                    _norm(norm, f),
                    nn.ReLU(True),
                    nn.Conv2d(f, f * 2, 3, stride=2, padding=1),
                    _norm(norm, f * 2),
                    nn.ReLU(True),
                )
            )
            self.up.append(
                nn.Sequential(
                    *[ResnetBlock(f * 2, norm=norm) for _ in range(n_blocks_local)],
                    nn.ConvTranspose2d(f * 2, f, 3, stride=2, padding=1, output_padding=1),
                    _norm(norm, f),
                    nn.ReLU(True),
                )
            )
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh())

    def to_global_resolution(self, x: Tensor) -> Tensor:
        """Pad to the size factor and average-pool ``n_local`` times: what G1 sees.

        Works on the encoded input and on images alike, so that a coarse real image and the
        coarse condition G1 draws it from line up pixel for pixel.

        Shape:
            - Input: (B, C, H, W)
            - Output: (B, C, H' / 2**n_local, W' / 2**n_local), H', W' padded to the factor.
        """
        x, _, _ = _pad_to_multiple(x, self.factor, self.size_mode, type(self).__name__)
        for _ in range(self.n_local):
            x = _downsample(x)
        return x

    def forward_global(self, x_coarse: Tensor) -> Tensor:
        """G1 alone with its own output layer (first training stage of the paper).

        Shape:
            - Input: (B, in_channels, h, w) from :meth:`to_global_resolution`.
            - Output: (B, out_channels, h, w) in [-1, 1].
        """
        return self.global_g(x_coarse)

    def global_parameters(self):
        """Parameters of G1 (frozen in the paper's second stage)."""
        return self.global_g.parameters()

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels, type(self).__name__)
        x, h, w = _pad_to_multiple(x, self.factor, self.size_mode, type(self).__name__)
        pyramid = [x]
        for _ in range(self.n_local):
            pyramid.append(_downsample(pyramid[-1]))
        feat = self.global_g.features(pyramid[-1])
        for n in range(self.n_local):
            inp = pyramid[self.n_local - 1 - n]
            feat = self.up[n](self.down[n](inp) + feat)
        return self.head(feat)[..., :h, :w]


def build_generator(cfg: dict, *, in_channels: int, size_mode: str = "pad") -> nn.Module:
    """Build the generator described by a :func:`pix2pixhd_config` dict."""
    common = dict(
        in_channels=in_channels,
        n_downsample=cfg["n_downsample"],
        n_blocks=cfg["n_blocks"],
        norm=cfg["norm"],
        size_mode=size_mode,
    )
    if cfg.get("n_local_enhancers", 0) > 0:
        # The preset's ngf is that of G1, as in the paper; each enhancer halves it.
        return LocalEnhancerGenerator(
            ngf=max(cfg["ngf"] // 2 ** cfg["n_local_enhancers"], 1),
            n_local_enhancers=cfg["n_local_enhancers"],
            n_blocks_local=cfg["n_blocks_local"],
            **common,
        )
    return GlobalGenerator(ngf=cfg["ngf"], **common)


# ----------------------------------------------------------------------------- discriminators


class NLayerDiscriminator(nn.Module):
    """PatchGAN (70x70 receptive field for ``n_layers=3``) returning every layer's output.

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: list of ``n_layers + 2`` tensors; the last is the (B, 1, h, w) patch score
          map, the others are intermediate features for feature matching.
    """

    def __init__(
        self, *, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance"
    ):
        super().__init__()
        pad = 2  # ceil((kernel - 1) / 2) for the 4x4 kernels, as in the paper's code release
        blocks = [
            nn.Sequential(nn.Conv2d(in_channels, ndf, 4, 2, pad), nn.LeakyReLU(0.2, True)),
        ]
        ch = ndf
        for i in range(1, n_layers + 1):
            nxt = min(ch * 2, 512)
            stride = 2 if i < n_layers else 1
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(ch, nxt, 4, stride, pad), _norm(norm, nxt), nn.LeakyReLU(0.2, True)
                )
            )
            ch = nxt
        blocks.append(nn.Sequential(nn.Conv2d(ch, 1, 4, 1, pad)))
        self.blocks = nn.ModuleList(blocks)
        self.in_channels = in_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        _check_input(x, self.in_channels, type(self).__name__)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs; discriminator k sees the input average-pooled k times.

    Shape:
        - Input: (B, in_channels, H, W) -- label encoding concatenated with the image.
        - Output: list (one per scale, finest first) of lists of feature maps, the last of
          each inner list being the patch score map.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        num_d: int = 3,
        norm: str = "instance",
    ):
        super().__init__()
        if num_d < 1:
            raise ValueError(f"num_d must be >= 1; got {num_d}.")
        self.nets = nn.ModuleList(
            NLayerDiscriminator(in_channels=in_channels, ndf=ndf, n_layers=n_layers, norm=norm)
            for _ in range(num_d)
        )

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        outs = []
        for k, net in enumerate(self.nets):
            if k > 0:
                x = _downsample(x)
            outs.append(net(x))
        return outs


def build_discriminator(cfg: dict, *, in_channels: int) -> MultiscaleDiscriminator:
    """Build the multi-scale discriminator of a :func:`pix2pixhd_config` dict."""
    return MultiscaleDiscriminator(
        in_channels=in_channels,
        ndf=cfg["ndf"],
        n_layers=cfg["n_layers_d"],
        num_d=cfg["num_d"],
        norm=cfg["norm"],
    )


# ----------------------------------------------------------------------------- losses


def lsgan_loss(outputs: Sequence[Sequence[Tensor]], target_is_real: bool) -> Tensor:
    """Least-squares GAN loss summed over discriminator scales (paper Eq. 2/4).

    Args:
        outputs: per-scale lists as returned by :class:`MultiscaleDiscriminator`; only the last
            tensor of each (the patch scores) is used.
        target_is_real: regress the scores to 1 (real) or 0 (fake).

    Returns:
        Scalar: sum over scales of the mean squared error to the target.
    """
    if len(outputs) == 0:
        raise ValueError("lsgan_loss got no discriminator outputs.")
    total = outputs[0][-1].new_zeros(())
    for scale in outputs:
        pred = scale[-1]
        target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
        total = total + F.mse_loss(pred, target)
    return total


class LSGANLoss(nn.Module):
    """Module form of :func:`lsgan_loss`, scaled by ``loss_weight``."""

    def __init__(self, *, loss_weight: float = 1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, outputs: Sequence[Sequence[Tensor]], target_is_real: bool) -> Tensor:
        return self.loss_weight * lsgan_loss(outputs, target_is_real)


def feature_matching_loss(
    real_outputs: Sequence[Sequence[Tensor]], fake_outputs: Sequence[Sequence[Tensor]]
) -> Tensor:
    """Discriminator feature-matching loss (paper Eq. 4).

    ``sum_k sum_i mean |D_k^(i)(s, x) - D_k^(i)(s, G(s))|`` over scales k and the intermediate
    layers i of each discriminator (the final score map is excluded). The mean is the paper's
    ``1 / N_i`` normalisation by the element count. Real features are detached so that the
    loss trains only the generator.

    Args:
        real_outputs, fake_outputs: per-scale feature lists from
            :class:`MultiscaleDiscriminator` on real and generated pairs, same structure.

    Returns:
        Scalar tensor.
    """
    if len(real_outputs) != len(fake_outputs):
        raise ValueError(
            f"feature_matching_loss: {len(real_outputs)} real scales vs "
            f"{len(fake_outputs)} fake scales; both must come from the same discriminator."
        )
    if len(real_outputs) == 0:
        raise ValueError("feature_matching_loss got no discriminator outputs.")
    total = fake_outputs[0][-1].new_zeros(())
    for real, fake in zip(real_outputs, fake_outputs):
        if len(real) != len(fake):
            raise ValueError(
                f"feature_matching_loss: a scale has {len(real)} real layers vs "
                f"{len(fake)} fake layers."
            )
        for r, f in zip(real[:-1], fake[:-1]):
            total = total + F.l1_loss(f, r.detach())
    return total


class FeatureMatchingLoss(nn.Module):
    """Module form of :func:`feature_matching_loss`, scaled by ``loss_weight`` (lambda = 10)."""

    def __init__(self, *, loss_weight: float = 10.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(
        self, real_outputs: Sequence[Sequence[Tensor]], fake_outputs: Sequence[Sequence[Tensor]]
    ) -> Tensor:
        return self.loss_weight * feature_matching_loss(real_outputs, fake_outputs)


class VGGPerceptualLoss(nn.Module):
    """VGG19 perceptual loss (paper's optional term), weights read only from a local file.

    Nothing is downloaded: ``weights_path`` must name a torchvision ``vgg19`` state dict
    (full model, or only its ``features.*`` part). The L1 distances of relu1_1 ... relu5_1
    activations are weighted 1/32, 1/16, 1/8, 1/4, 1.

    Shape:
        - Inputs: fake, real of shape (B, 3, H, W) in [-1, 1].
        - Output: scalar.

    Raises:
        FileNotFoundError: the weights file does not exist.
        ValueError: the file is not a VGG19 state dict (missing or mismatched keys).
    """

    _SLICES = (2, 7, 12, 21, 30)  # torchvision vgg19.features indices after relu{1..5}_1
    _WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

    def __init__(self, *, weights_path: str | os.PathLike, loss_weight: float = 10.0):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"VGG perceptual loss: weights file {path} does not exist. Give the path of a "
                f"torchvision vgg19 state dict, or disable the VGG loss (lambda_vgg=0)."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"VGG perceptual loss: cannot read {path} as a state dict.") from err
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(
                f"VGG perceptual loss: {path} holds {type(state).__name__}, not a dict."
            )
        feats = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        # Only the convolutional part: the classifier would add 120M unused parameters.
        features = make_layers(cfgs["E"])[: self._SLICES[-1]]
        try:
            features.load_state_dict(feats or state, strict=False)
            missing = [k for k in features.state_dict() if k not in (feats or state)]
        except RuntimeError as err:
            raise ValueError(f"VGG perceptual loss: {path} does not match vgg19: {err}") from err
        if missing:
            raise ValueError(
                f"VGG perceptual loss: {path} lacks vgg19 feature weights {missing[:4]}... "
                f"(expected keys like 'features.0.weight')."
            )
        features.requires_grad_(False).eval()
        self.features = features
        self.loss_weight = loss_weight
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _acts(self, x: Tensor) -> list[Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        acts, start = [], 0
        for end in self._SLICES:
            x = self.features[start:end](x)
            acts.append(x)
            start = end
        return acts

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        total = fake.new_zeros(())
        for w, a, b in zip(self._WEIGHTS, self._acts(fake), self._acts(real)):
            total = total + w * F.l1_loss(a, b.detach())
        return self.loss_weight * total


# ----------------------------------------------------------------------------- instances


def instance_edges(inst: Tensor) -> Tensor:
    """Instance boundary map: 1 where a pixel differs from a 4-neighbour, else 0.

    Shape:
        - Input: (B, H, W) or (B, 1, H, W) integer instance ids.
        - Output: (B, 1, H, W) float.
    """
    if inst.ndim == 3:
        inst = inst[:, None]
    if inst.ndim != 4 or inst.shape[1] != 1:
        raise ValueError(
            f"instance_edges expects (B, H, W) or (B, 1, H, W); got {tuple(inst.shape)}."
        )
    edge = torch.zeros_like(inst, dtype=torch.bool)
    dx = inst[..., :, 1:] != inst[..., :, :-1]
    dy = inst[..., 1:, :] != inst[..., :-1, :]
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    return edge.float()


def instance_average_pool(feat: Tensor, inst: Tensor) -> Tensor:
    """Replace each pixel's features by the mean over its instance (paper Sec. 3.4).

    Shape:
        - feat: (B, C, H, W); inst: (B, H, W) integer ids.
        - Output: (B, C, H, W).
    """
    if inst.ndim == 4:
        inst = inst[:, 0]
    if feat.shape[0] != inst.shape[0] or feat.shape[-2:] != inst.shape[-2:]:
        raise ValueError(
            f"instance_average_pool: features {tuple(feat.shape)} and instances "
            f"{tuple(inst.shape)} disagree in batch or spatial size."
        )
    b, c, h, w = feat.shape
    out = torch.empty_like(feat)
    for i in range(b):
        ids, index = torch.unique(inst[i].reshape(-1), return_inverse=True)
        flat = feat[i].reshape(c, -1)
        sums = flat.new_zeros(c, len(ids)).index_add_(1, index, flat)
        counts = torch.bincount(index, minlength=len(ids)).clamp_min(1).to(flat.dtype)
        out[i] = (sums / counts)[:, index].reshape(c, h, w)
    return out


class InstanceFeatureEncoder(nn.Module):
    """Encoder-decoder E whose output is averaged per instance (low-dim style code).

    Shape:
        - Input: image (B, 3, H, W) and instance ids (B, H, W).
        - Output: (B, feat_dim, H, W), constant inside each instance.
    """

    def __init__(self, *, feat_dim: int = 3, ngf: int = 16, n_downsample: int = 4):
        super().__init__()
        self.factor = 2**n_downsample
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, 7),
            _norm("instance", ngf),
            nn.ReLU(True),
        ]
        ch = ngf
        for _ in range(n_downsample):
            layers += [nn.Conv2d(ch, ch * 2, 3, 2, 1), _norm("instance", ch * 2), nn.ReLU(True)]
            ch *= 2
        for _ in range(n_downsample):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1),
                _norm("instance", ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, feat_dim, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.feat_dim = feat_dim

    def forward(self, image: Tensor, inst: Tensor) -> Tensor:
        _check_input(image, 3, type(self).__name__)
        padded, h, w = _pad_to_multiple(image, self.factor, "pad", type(self).__name__)
        feat = self.net(padded)[..., :h, :w]
        return instance_average_pool(feat, inst)


class InstanceFeatureBank:
    """Per-class k-means over instance features, to sample style codes at generation time.

    Paper Sec. 3.4: after training, the encoder's instance features of each class are
    clustered; at inference a cluster centre is picked per instance.
    """

    def __init__(self, *, num_clusters: int = 10, seed: int = 0):
        self.num_clusters = num_clusters
        self.seed = seed
        self._feats: dict[int, list[Tensor]] = {}
        self.centers: dict[int, Tensor] = {}

    def add(self, feat: Tensor, inst: Tensor, label: Tensor) -> None:
        """Collect one feature vector per instance. feat (B, C, H, W); inst, label (B, H, W)."""
        for i in range(feat.shape[0]):
            for iid in torch.unique(inst[i]).tolist():
                m = inst[i] == iid
                cls = int(torch.mode(label[i][m]).values)
                self._feats.setdefault(cls, []).append(feat[i][:, m].mean(1).detach().cpu())

    def fit(self, iters: int = 20) -> None:
        """Run k-means (``num_clusters`` per class, fewer if fewer instances) on what was added."""
        if not self._feats:
            raise ValueError("InstanceFeatureBank.fit: no features were added (call add first).")
        gen = torch.Generator().manual_seed(self.seed)
        for cls, feats in self._feats.items():
            x = torch.stack(feats)
            k = min(self.num_clusters, len(x))
            centers = x[torch.randperm(len(x), generator=gen)[:k]].clone()
            for _ in range(iters):
                assign = torch.cdist(x, centers).argmin(1)
                for j in range(k):
                    if (assign == j).any():
                        centers[j] = x[assign == j].mean(0)
            self.centers[cls] = centers

    def sample(self, inst: Tensor, label: Tensor, *, feat_dim: int, generator=None) -> Tensor:
        """Feature map (B, feat_dim, H, W): a random cluster centre per instance."""
        if inst.ndim == 4:
            inst = inst[:, 0]
        if inst.shape != label.shape:
            raise ValueError(
                f"InstanceFeatureBank.sample: instances {tuple(inst.shape)} and labels "
                f"{tuple(label.shape)} must both be (B, H, W)."
            )
        b, h, w = label.shape
        inst, label = inst.cpu(), label.cpu()
        out = torch.zeros(b, feat_dim, h, w)
        for i in range(b):
            for iid in torch.unique(inst[i]).tolist():
                m = inst[i] == iid
                cls = int(torch.mode(label[i][m]).values)
                centers = self.centers.get(cls)
                if centers is None:
                    continue  # class never seen in training: zero code
                if centers.shape[1] != feat_dim:
                    raise ValueError(
                        f"InstanceFeatureBank holds {centers.shape[1]}-d features for class "
                        f"{cls}; the generator expects feat_dim={feat_dim}."
                    )
                j = int(torch.randint(len(centers), (1,), generator=generator))
                out[i][:, m] = centers[j][:, None]
        return out

    def state_dict(self) -> dict:
        return {
            "num_clusters": self.num_clusters,
            "seed": self.seed,
            "centers": {int(k): v for k, v in self.centers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.num_clusters = int(state.get("num_clusters", self.num_clusters))
        self.seed = int(state.get("seed", self.seed))
        self.centers = {int(k): v for k, v in state["centers"].items()}


# ----------------------------------------------------------------------------- input encoding


def encode_input(
    label: Tensor,
    *,
    num_labels: int,
    inst: Tensor | None = None,
    use_edges: bool = False,
    feat: Tensor | None = None,
) -> Tensor:
    """Generator/discriminator conditioning: one-hot labels [+ instance edges] [+ features].

    Args:
        label: (B, H, W) integer label map with values in ``[0, num_labels)`` (a void/ignore
            value is just another label here: the generator must draw those pixels too).
        num_labels: number of label values, including void.
        inst: (B, H, W) instance ids, needed when ``use_edges``.
        use_edges: append the instance boundary map (1 channel).
        feat: (B, F, H, W) instance features to append.

    Returns:
        (B, num_labels + use_edges + F, H, W) float tensor.

    Raises:
        ValueError: label values outside ``[0, num_labels)``, naming them.
    """
    if label.ndim == 4 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 3:
        raise ValueError(f"encode_input expects label (B, H, W); got {tuple(label.shape)}.")
    label = label.long()
    bad = (label < 0) | (label >= num_labels)
    if bad.any():
        values = sorted(torch.unique(label[bad]).tolist())[:10]
        raise ValueError(
            f"Label map has values {values} outside the {num_labels} known labels "
            f"[0, {num_labels - 1}]: check the dataset's class list / ignore value."
        )
    parts = [F.one_hot(label, num_labels).permute(0, 3, 1, 2).float()]
    if use_edges:
        if inst is None:
            raise ValueError("encode_input: use_edges=True needs an instance map (inst).")
        parts.append(instance_edges(inst).to(parts[0]))
    if feat is not None:
        parts.append(feat.to(parts[0]))
    return torch.cat(parts, 1)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def total_factor(cfg: dict) -> int:
    """Downsampling factor the generator of ``cfg`` needs sizes to be a multiple of."""
    return int(math.pow(2, cfg["n_downsample"] + cfg.get("n_local_enhancers", 0)))


# ----------------------------------------------------------------------------- label -> image


class Pix2PixHDGenerator(nn.Module):
    """Label map -> image generator that carries its own construction settings.

    The settings travel in the state dict (``_extra_state``), so
    :meth:`from_checkpoint` rebuilds the right network from a checkpoint file alone.

    Args:
        num_labels: label values including void (one-hot channels).
        preset: "slim" or "paper"; ``overrides`` change single preset entries.
        use_edges: condition on instance boundaries as well.
        feat_dim: channels of instance features appended to the input (0: no encoder).
        size_mode: "pad" or "error", see :class:`GlobalGenerator`.

    Shape:
        - label: (B, H, W) int; inst: (B, H, W) int or None; feat: (B, feat_dim, H, W) or None.
        - Output: (B, 3, H, W) in [-1, 1].
    """

    def __init__(
        self,
        *,
        num_labels: int,
        preset: str = "slim",
        overrides: dict | None = None,
        use_edges: bool = False,
        feat_dim: int = 0,
        size_mode: str = "pad",
    ):
        super().__init__()
        self.settings = dict(
            num_labels=num_labels,
            preset=preset,
            overrides=dict(overrides or {}),
            use_edges=use_edges,
            feat_dim=feat_dim,
            size_mode=size_mode,
        )
        self.cfg = pix2pixhd_config(preset, **(overrides or {}))
        self.num_labels = num_labels
        self.use_edges = use_edges
        self.feat_dim = feat_dim
        self.in_channels = num_labels + int(use_edges) + feat_dim
        # Channels the discriminator is conditioned on: labels and edges, not the features
        # (as in the paper's code release, D judges the image given the layout only).
        self.cond_channels = num_labels + int(use_edges)
        self.net = build_generator(self.cfg, in_channels=self.in_channels, size_mode=size_mode)
        # Per-class k-means of the encoder's instance features; set after training (see
        # ``Pix2PixHDFeatureBankHook``). It travels in the state dict with the settings.
        self.feature_bank: InstanceFeatureBank | None = None
        self.bank_generator = torch.Generator().manual_seed(0)

    def encode(
        self, label: Tensor, inst: Tensor | None = None, feat: Tensor | None = None
    ) -> Tensor:
        """Conditioning tensor (B, in_channels, H, W) for G; its first ``cond_channels`` for D.

        Without ``feat`` (and ``feat_dim > 0``) each instance gets a random cluster centre of
        its class from :attr:`feature_bank` (drawn with :attr:`bank_generator`), or zeros
        when no bank has been fitted.
        """
        if self.use_edges and inst is None:
            inst = label  # without instance ids, class regions are the instances
        if self.feat_dim and feat is None:
            if self.feature_bank is not None and self.feature_bank.centers:
                feat = self.feature_bank.sample(
                    label if inst is None else inst,
                    label,
                    feat_dim=self.feat_dim,
                    generator=self.bank_generator,
                )
            else:
                feat = label.new_zeros((label.shape[0], self.feat_dim, *label.shape[-2:])).float()
        return encode_input(
            label, num_labels=self.num_labels, inst=inst, use_edges=self.use_edges, feat=feat
        )

    def forward(
        self, label: Tensor, inst: Tensor | None = None, feat: Tensor | None = None
    ) -> Tensor:
        return self.net(self.encode(label, inst, feat))

    def get_extra_state(self) -> dict:
        state = dict(self.settings)
        if self.feature_bank is not None:
            state["feature_bank"] = self.feature_bank.state_dict()
        return state

    def set_extra_state(self, state: dict) -> None:
        state = dict(state)
        bank = state.pop("feature_bank", None)
        if state != self.settings:
            raise ValueError(
                f"Checkpoint generator settings {state} differ from this generator's "
                f"{self.settings}; build it with Pix2PixHDGenerator.from_checkpoint."
            )
        if bank is not None:
            self.feature_bank = InstanceFeatureBank()
            self.feature_bank.load_state_dict(bank)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, map_location: str = "cpu"
    ) -> Pix2PixHDGenerator:
        """Build and load a generator from a checkpoint file.

        Accepts a plain state dict of this module, or an mmengine checkpoint whose
        ``state_dict`` holds it under any prefix (e.g. ``generator.``).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file holds no Pix2PixHD generator.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Generator checkpoint {path} does not exist.")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:
            raise ValueError(f"Cannot read generator checkpoint {path}.") from err
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        keys = [k for k in (state or {}) if k.endswith("_extra_state") and "net." not in k]
        if not keys:
            raise ValueError(
                f"{path} holds no Pix2PixHD generator (no '<prefix>_extra_state' entry with "
                f"its settings); expected a checkpoint written by ganaug's Pix2PixHD model."
            )
        prefix = keys[0][: -len("_extra_state")]
        gen = cls(**{k: v for k, v in state[keys[0]].items() if k != "feature_bank"})
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        gen.load_state_dict(sub)
        return gen.eval()
