"""Pix2PixHD training through mmengine / mmsegmentation.

``Pix2PixHD`` is a registered model whose ``train_step`` alternates a discriminator and a
generator update over an ``OptimWrapperDict`` (keys ``generator`` and ``discriminator``,
built by mmengine per submodule of the same name). Data come from any mmseg segmentation
dataset: the image is the target, ``gt_sem_seg`` the condition. Config sketch::

    model = dict(
        type='Pix2PixHD', num_labels=12, void_label=11, preset='slim',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[127.5] * 3,
                               std=[127.5] * 3, bgr_to_rgb=True, size=(120, 160)))
    optim_wrapper = dict(
        constructor='AdversarialOptimWrapperConstructor',  # one wrapper per sub-network
        generator=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=2e-4)),
        discriminator=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=2e-4)))
    custom_hooks = [dict(type='Pix2PixHDSampleHook', interval=200)]

Instance-wise feature encoder (paper Sec. 3.4): ``use_encoder=True`` adds an encoder E whose
instance-averaged output (``feat_dim`` channels) is appended to G's input; E is trained with
G (it needs ``optim_wrapper.encoder``, stepped after the same backward pass as G) and
``Pix2PixHDFeatureBankHook`` fits the per-class k-means bank that supplies the features at
synthesis time. Data without instance maps (CamVid) use class regions as instances.

Two-stage schedule for the local enhancer (paper Sec. 3.2): ``global_only_iters`` first
train G1 alone at the coarse resolution, then ``local_only_iters`` train the enhancer with G1
frozen, then everything jointly. The stage follows the runner's iteration, so a resumed run
continues in the right stage.

Checkpoints written by mmengine hold both networks and both optimizers, so ``resume=True``
restores everything; :meth:`ganaug.core.pix2pixhd.Pix2PixHDGenerator.from_checkpoint` reads
the generator back out of such a checkpoint.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import MessageHub, print_log
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict
from mmseg.registry import HOOKS, MODELS
from torch import Tensor

from ganaug.core.pix2pixhd import (
    FeatureMatchingLoss,
    InstanceFeatureBank,
    InstanceFeatureEncoder,
    LocalEnhancerGenerator,
    LSGANLoss,
    Pix2PixHDGenerator,
    VGGPerceptualLoss,
    build_discriminator,
)

__all__ = ["Pix2PixHD", "Pix2PixHDSampleHook", "Pix2PixHDFeatureBankHook"]


@MODELS.register_module()
class Pix2PixHD(BaseModel):
    """Pix2PixHD as an mmengine model.

    Args:
        num_labels: label values fed to the generator, including void (12 for CamVid).
        void_label: label the data pipeline's ignore value (``ignore_index``) is mapped to;
            void pixels are drawn by the generator like any other label.
        ignore_index: the pipeline's ignore value (mmseg: 255).
        preset: "slim" or "paper"; ``overrides`` change single entries (see
            :func:`ganaug.core.pix2pixhd.pix2pixhd_config`).
        use_edges: condition on instance boundaries (class-region boundaries when the data
            have no instance map).
        vgg_weights: path of torchvision vgg19 weights to enable the perceptual loss; None
            disables it (nothing is ever downloaded).
        use_encoder: train an instance-wise feature encoder jointly with G.
        feat_dim: channels of the encoder's features (paper: 3).
        encoder_cfg: ``ngf`` and ``n_downsample`` of the encoder (default 16 and 4).
        global_only_iters: iterations that train only G1 at the coarse resolution (needs a
            preset with a local enhancer).
        local_only_iters: iterations after those that train the enhancer with G1 frozen.
        data_preprocessor: should scale images to [-1, 1] in RGB order.
    """

    def __init__(
        self,
        *,
        num_labels: int,
        void_label: int | None = None,
        ignore_index: int = 255,
        preset: str = "slim",
        overrides: dict | None = None,
        use_edges: bool = False,
        vgg_weights: str | None = None,
        use_encoder: bool = False,
        feat_dim: int = 3,
        encoder_cfg: dict | None = None,
        global_only_iters: int = 0,
        local_only_iters: int = 0,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if void_label is not None and not 0 <= void_label < num_labels:
            raise ValueError(f"void_label must be in [0, {num_labels}); got {void_label}.")
        if use_encoder and feat_dim < 1:
            raise ValueError(f"use_encoder=True needs feat_dim >= 1; got {feat_dim}.")
        if global_only_iters < 0 or local_only_iters < 0:
            raise ValueError(
                f"global_only_iters and local_only_iters must be >= 0; got "
                f"{global_only_iters} and {local_only_iters}."
            )
        self.generator = Pix2PixHDGenerator(
            num_labels=num_labels,
            preset=preset,
            overrides=overrides,
            use_edges=use_edges,
            feat_dim=feat_dim if use_encoder else 0,
        )
        if (global_only_iters or local_only_iters) and not isinstance(
            self.generator.net, LocalEnhancerGenerator
        ):
            raise ValueError(
                f"global_only_iters / local_only_iters schedule a local enhancer, but preset "
                f"{preset!r} with overrides {overrides} has n_local_enhancers=0; use "
                f"preset='paper' or overrides=dict(n_local_enhancers=1)."
            )
        self.encoder = (
            InstanceFeatureEncoder(feat_dim=feat_dim, **(encoder_cfg or {}))
            if use_encoder
            else None
        )
        self.global_only_iters = global_only_iters
        self.local_only_iters = local_only_iters
        self._steps = 0  # iteration count when no runner's MessageHub provides one
        self._stage: str | None = None
        cfg = self.generator.cfg
        self.discriminator = build_discriminator(cfg, in_channels=self.generator.cond_channels + 3)
        self.loss_gan = LSGANLoss()
        self.loss_feat = FeatureMatchingLoss(loss_weight=cfg["lambda_feat"])
        self.loss_vgg = (
            VGGPerceptualLoss(weights_path=vgg_weights, loss_weight=cfg["lambda_vgg"])
            if vgg_weights
            else None
        )
        self.num_labels = num_labels
        self.void_label = void_label
        self.ignore_index = ignore_index

    # ------------------------------------------------------------------ data

    def _labels(self, data_samples) -> Tensor:
        """(B, H, W) long label maps with the ignore value mapped to ``void_label``."""
        label = torch.stack([s.gt_sem_seg.data[0] for s in data_samples]).long()
        ignored = label == self.ignore_index
        if ignored.any():
            if self.void_label is None:
                raise ValueError(
                    f"Label maps contain the ignore value {self.ignore_index} but the model "
                    f"has no void_label to draw those pixels with; set void_label."
                )
            label = label.masked_fill(ignored, self.void_label)
        return label

    @staticmethod
    def instances(label: Tensor) -> Tensor:
        """Instance ids (B, H, W): class regions act as instances (no instance maps here)."""
        return label

    @torch.no_grad()
    def encode_features(self, real: Tensor, label: Tensor) -> Tensor:
        """Instance-averaged encoder features (B, feat_dim, H, W) of real images."""
        if self.encoder is None:
            raise ValueError("encode_features needs a model built with use_encoder=True.")
        return self.encoder(real, self.instances(label))

    # ------------------------------------------------------------------ steps

    def stage(self, iteration: int) -> str:
        """Training stage at ``iteration``: "global", "local" or "joint"."""
        if iteration < self.global_only_iters:
            return "global"
        if iteration < self.global_only_iters + self.local_only_iters:
            return "local"
        return "joint"

    def _current_iter(self) -> int:
        # The runner's RuntimeInfoHook records the iteration before every train step, also
        # after a resume; outside a runner the model counts its own steps.
        iteration = MessageHub.get_current_instance().get_info("iter")
        return self._steps if iteration is None else int(iteration)

    def train_step(self, data, optim_wrapper: OptimWrapperDict) -> dict[str, Tensor]:
        """One D update then one G (+ encoder) update; D frozen during the G step.

        In the "global" stage both networks work on the coarse pyramid level only; in the
        "local" stage G1's weights are frozen.
        """
        data = self.data_preprocessor(data, True)
        real = data["inputs"]
        label = self._labels(data["data_samples"]).to(real.device)
        g_wrap, d_wrap = optim_wrapper["generator"], optim_wrapper["discriminator"]
        e_wrap = None
        if self.encoder is not None:
            if "encoder" not in optim_wrapper:
                raise KeyError(
                    "Pix2PixHD(use_encoder=True) trains the encoder with G: add an "
                    "optim_wrapper.encoder entry (e.g. the generator's settings); got "
                    f"{sorted(optim_wrapper.keys())}."
                )
            e_wrap = optim_wrapper["encoder"]

        stage = self.stage(self._current_iter())
        if stage != self._stage:
            print_log(f"Pix2PixHD training stage: {stage}", logger="current")
            self._stage = stage
        net = self.generator.net
        if isinstance(net, LocalEnhancerGenerator):
            net.global_g.requires_grad_(stage != "local")

        with g_wrap.optim_context(self.generator):
            inst = self.instances(label)
            feat = self.encoder(real, inst) if self.encoder is not None else None
            cond = self.generator.encode(label, inst, feat)
            if stage == "global":
                cond = net.to_global_resolution(cond)
                real = net.to_global_resolution(real)
                fake = net.forward_global(cond)
            else:
                fake = net(cond)
            # D's condition: labels (+ edges) only, no path back into the encoder.
            cond = cond[:, : self.generator.cond_channels].detach()

        self.discriminator.requires_grad_(True)
        with d_wrap.optim_context(self.discriminator):
            loss_d_fake = self.loss_gan(
                self.discriminator(torch.cat([cond, fake.detach()], 1)), False
            )
            loss_d_real = self.loss_gan(self.discriminator(torch.cat([cond, real], 1)), True)
            loss_d = 0.5 * (loss_d_fake + loss_d_real)
        d_wrap.update_params(loss_d)

        # D is frozen while G learns: its gradients would otherwise accumulate for nothing.
        self.discriminator.requires_grad_(False)
        with g_wrap.optim_context(self.generator):
            out_fake = self.discriminator(torch.cat([cond, fake], 1))
            with torch.no_grad():
                out_real = self.discriminator(torch.cat([cond, real], 1))
            loss_g_gan = self.loss_gan(out_fake, True)
            loss_g_feat = self.loss_feat(out_real, out_fake)
            loss_g = loss_g_gan + loss_g_feat
            log = {}
            if self.loss_vgg is not None:
                loss_g_vgg = self.loss_vgg(fake, real)
                loss_g = loss_g + loss_g_vgg
                log["loss_g_vgg"] = loss_g_vgg.detach()
        g_wrap.update_params(loss_g)
        if e_wrap is not None:
            # The backward pass above reached E through the features: step it likewise
            # (Adam is per-parameter, so this equals one optimizer over G and E).
            e_wrap.step()
            e_wrap.zero_grad()
        self.discriminator.requires_grad_(True)
        if isinstance(net, LocalEnhancerGenerator):
            net.global_g.requires_grad_(True)
        self._steps += 1

        log.update(
            loss_d_real=loss_d_real.detach(),
            loss_d_fake=loss_d_fake.detach(),
            loss_g_gan=loss_g_gan.detach(),
            loss_g_feat=loss_g_feat.detach(),
            loss=(loss_g + loss_d).detach(),
        )
        return log

    @torch.no_grad()
    def generate(self, label: Tensor, real: Tensor | None = None) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] for (B, H, W) label maps (void already mapped).

        With an encoder and ``real`` images (B, 3, H, W), their instance features are used
        (reconstruction); otherwise the generator's feature bank (or zeros) supplies them.
        """
        feat = None
        if self.encoder is not None and real is not None:
            feat = self.encode_features(real, label)
        return self.generator(label, self.instances(label), feat)

    def forward(self, inputs, data_samples=None, mode: str = "tensor"):
        """``mode='tensor'``: generated images for the samples' label maps."""
        if mode != "tensor":
            raise ValueError(
                f"Pix2PixHD.forward supports mode='tensor' only (training goes through "
                f"train_step); got mode={mode!r}."
            )
        if data_samples is None:
            raise ValueError("Pix2PixHD.forward needs data_samples carrying gt_sem_seg.")
        return self.generator(self._labels(data_samples).to(inputs.device))

    def val_step(self, data):
        data = self.data_preprocessor(data, False)
        return self.forward(data["inputs"], data["data_samples"])

    test_step = val_step


def _to_uint8(t: Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((t.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)


def _palette(n: int, metainfo: dict | None) -> np.ndarray:
    pal = list((metainfo or {}).get("palette") or [])
    rng = np.random.default_rng(0)
    while len(pal) < n:
        pal.append(rng.integers(0, 256, 3).tolist())
    return np.asarray(pal[:n], np.uint8)


@HOOKS.register_module()
class Pix2PixHDSampleHook(Hook):
    """Save a grid of rows ``label | real | generated`` every ``interval`` iterations.

    The same first ``num_samples`` training samples are used each time, so grids from
    successive iterations are comparable. Files: ``<work_dir>/samples/iter_<n>.png``.
    """

    priority = "LOW"

    def __init__(self, *, interval: int = 200, num_samples: int = 4):
        self.interval = interval
        self.num_samples = num_samples
        self._batch = None

    def before_train(self, runner) -> None:
        dataset = runner.train_dataloader.dataset
        items = [dataset[i] for i in range(min(self.num_samples, len(dataset)))]
        self._batch = dict(
            inputs=[it["inputs"] for it in items], data_samples=[it["data_samples"] for it in items]
        )
        self._metainfo = getattr(dataset, "metainfo", None)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            self.save_grid(runner)

    def save_grid(self, runner) -> str:
        import cv2

        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(self._batch, False)
            label = model._labels(data["data_samples"]).to(data["inputs"].device)
            fake = model.generate(label, data["inputs"])
        model.train(was_training)
        pal = _palette(model.num_labels, self._metainfo)
        rows = []
        for lb, real, gen in zip(label.cpu().numpy(), data["inputs"].cpu(), fake.cpu()):
            rows.append(np.concatenate([pal[lb], _to_uint8(real), _to_uint8(gen)], 1))
        grid = np.concatenate(rows, 0)
        folder = os.path.join(runner.work_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"iter_{runner.iter + 1}.png")
        cv2.imwrite(path, grid[..., ::-1])
        print_log(f"Pix2PixHD samples (label | real | generated) saved to {path}", logger="current")
        return path


@HOOKS.register_module()
class Pix2PixHDFeatureBankHook(Hook):
    """Fit the generator's per-class k-means feature bank from the encoder (paper Sec. 3.4).

    Every ``interval`` iterations and at the end of training, the encoder's instance
    features of the first ``num_samples`` training samples (all when None) are clustered,
    ``num_clusters`` per class, and stored in ``model.generator.feature_bank``. The hook runs
    before the checkpoint hook in the same iteration, so each checkpoint carries the bank and
    :meth:`Pix2PixHDGenerator.from_checkpoint` (hence ``ganaug synth``) samples features
    from it.
    """

    priority = "NORMAL"  # before CheckpointHook (VERY_LOW) in after_train_iter

    def __init__(
        self,
        *,
        interval: int = 250,
        num_samples: int | None = None,
        batch_size: int = 8,
        num_clusters: int = 10,
        seed: int = 0,
    ):
        if interval < 1 or batch_size < 1 or num_clusters < 1:
            raise ValueError(
                f"Pix2PixHDFeatureBankHook needs interval, batch_size and num_clusters >= 1; "
                f"got {interval}, {batch_size}, {num_clusters}."
            )
        self.interval = interval
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.num_clusters = num_clusters
        self.seed = seed

    @staticmethod
    def _model(runner) -> Pix2PixHD:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        if getattr(model, "encoder", None) is None:
            raise TypeError(
                f"Pix2PixHDFeatureBankHook needs a Pix2PixHD model built with "
                f"use_encoder=True; got {type(model).__name__} without an encoder."
            )
        return model

    def before_train(self, runner) -> None:
        self._model(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            self.fit_bank(runner)

    def fit_bank(self, runner) -> InstanceFeatureBank:
        model = self._model(runner)
        dataset = runner.train_dataloader.dataset
        n = len(dataset) if self.num_samples is None else min(self.num_samples, len(dataset))
        bank = InstanceFeatureBank(num_clusters=self.num_clusters, seed=self.seed)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, n, self.batch_size):
                items = [dataset[i] for i in range(start, min(n, start + self.batch_size))]
                batch = dict(
                    inputs=[it["inputs"] for it in items],
                    data_samples=[it["data_samples"] for it in items],
                )
                data = model.data_preprocessor(batch, False)
                label = model._labels(data["data_samples"]).to(data["inputs"].device)
                feat = model.encode_features(data["inputs"], label)
                bank.add(feat, model.instances(label), label)
        model.train(was_training)
        bank.fit()
        model.generator.feature_bank = bank
        print_log(
            f"Pix2PixHD feature bank: {len(bank.centers)} classes from {n} samples, up to "
            f"{self.num_clusters} clusters each",
            logger="current",
        )
        return bank
