# The same segmentor, trained against a label-map discriminator (Luc et al. 2016).
_base_ = ["./fcn_unet-s4_1xb8-600it_camvid-120x160.py"]

segmentor = {{_base_.model}}
model = dict(
    _delete_=True,
    type="AdversarialSegmentor",
    segmentor=segmentor,
    discriminator=dict(type="LabelMapDiscriminator", base_channels=32, num_layers=3, downsample=2),
    adv_loss_type="vanilla",
    adv_weight=0.05,
    # 100 of 600 iters: let the segmentor produce sensible maps before the critic weighs in
    warmup_iters=100,
)
optim_wrapper = dict(
    _delete_=True,
    constructor="AdversarialOptimWrapperConstructor",
    segmentor=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-3, weight_decay=1e-4)),
    discriminator=dict(
        type="OptimWrapper", optimizer=dict(type="Adam", lr=2e-4, betas=(0.5, 0.999))
    ),
)
# Under torchrun each network gets its own DDP wrapper (GAN training updates them apart).
model_wrapper_cfg = dict(type="MMSeparateDistributedDataParallel", find_unused_parameters=False)
