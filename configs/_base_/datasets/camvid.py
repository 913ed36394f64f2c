# CamVid, 11-class SegNet version, downscaled to 240x180 (see the data folder's README).
# The data root is a setting: $GANAUG_DATA_ROOT (default ../shared/data, relative to the
# directory you run from).
custom_imports = dict(imports=["ganaug.mmseg"], allow_failed_imports=False)

dataset_type = "CamVidDataset"
data_root = "{{$GANAUG_DATA_ROOT:../shared/data}}/camvid"
num_classes = 11
crop_size = (120, 160)  # (H, W): quarter-area crops of the 180x240 frames

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    # label 11 = void -> 255 (ignored); also checks values and image/label sizes
    dict(type="ValidateSegLabels", num_classes=num_classes, void_values=[11]),
    dict(type="RandomResize", scale=(240, 180), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="ValidateSegLabels", num_classes=num_classes, void_values=[11]),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="train", seg_map_path="trainannot"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="val", seg_map_path="valannot"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
