# Slim Pix2PixHD (~8M-parameter generator, 2-scale discriminator) on CamVid at 120x160.
# 1000 iters x batch 4 = 4000 pairs seen, about 11 passes over the 367 training frames.
# Train:  python tools/train.py configs/pix2pixhd/pix2pixhd-slim_1xb4-1000it_camvid-120x160.py
#         (--resume continues from work_dir's last checkpoint: both nets, both optimizers)
_base_ = ["../_base_/default_runtime.py"]
custom_imports = dict(imports=["ganaug.mmseg"], allow_failed_imports=False)

data_root = "{{$GANAUG_DATA_ROOT:../shared/data}}/camvid"
num_classes = 11
void_label = 11  # CamVid's void: ValidateSegLabels turns it into 255, the model back to 11
size_hw = (120, 160)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="ValidateSegLabels", num_classes=num_classes, void_values=[void_label]),
    dict(type="Resize", scale=(size_hw[1], size_hw[0]), keep_ratio=False),  # scale is (W, H)
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type="CamVidDataset",
        data_root=data_root,
        data_prefix=dict(img_path="train", seg_map_path="trainannot"),
        pipeline=train_pipeline,
    ),
)
model = dict(
    type="Pix2PixHD",
    num_labels=num_classes + 1,  # one-hot channels include void: G must draw it too
    void_label=void_label,
    ignore_index=255,
    preset="slim",
    overrides=dict(),
    use_edges=False,  # CamVid has no instance maps
    vgg_weights=None,  # a torchvision vgg19 state-dict path enables the perceptual loss
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[127.5, 127.5, 127.5],  # images to [-1, 1], the generator's tanh range
        std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True,
        size=size_hw,  # frames are resized to it already: no padding happens
        seg_pad_val=255,
    ),
)
# Paper: Adam, lr 2e-4, beta1 0.5 for both networks; one optimizer per sub-network.
optim_wrapper = dict(
    constructor="AdversarialOptimWrapperConstructor",
    generator=dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=2e-4, betas=(0.5, 0.999))),
    discriminator=dict(
        type="OptimWrapper", optimizer=dict(type="Adam", lr=2e-4, betas=(0.5, 0.999))
    ),
)
param_scheduler = []
train_cfg = dict(type="IterBasedTrainLoop", max_iters=1000, val_interval=10**9)
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=250, max_keep_ckpts=2),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
custom_hooks = [dict(type="Pix2PixHDSampleHook", interval=250, num_samples=4)]
randomness = dict(seed=0)
