# The adv_seg baseline segmentor with RareClassPaste: segments of the four rarest
# object-like classes are pasted into training images, chosen by inverse pixel
# frequency (square-root rule). Same model, schedule and data otherwise.
_base_ = ["../adv_seg/fcn_unet-s4_1xb8-600it_camvid-120x160.py"]
custom_imports = dict(imports=["ganaug.mmseg"], allow_failed_imports=False)

data_root = "{{$GANAUG_DATA_ROOT:../shared/data}}/camvid"
num_classes = 11
crop_size = (120, 160)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    # Before ValidateSegLabels: label maps are still raw here, so 11 (void) is ignored.
    dict(
        type="RareClassPaste",
        img_dir=data_root + "/train",
        ann_dir=data_root + "/trainannot",
        classes=[2, 6, 9, 10],  # Pole, SignSymbol, Pedestrian, Bicyclist
        selection="inverse",
        power=0.5,
        count=(1, 3),
        scale=(0.7, 1.3),
        blend_mode="gaussian",
        prob=0.8,
        ignore_index=11,
    ),
    dict(type="ValidateSegLabels", num_classes=num_classes, void_values=[11]),
    dict(type="RandomResize", scale=(240, 180), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
