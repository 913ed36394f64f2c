# Slim Pix2PixHD with one local enhancer at CamVid's full 180x240, trained on the paper's
# schedule (Sec. 3.2): G1 alone at the coarse 90x120 level (iterations 0-399), then the
# enhancer with G1 frozen (400-599), then both jointly (600-999). The stage follows the
# runner's iteration, so --resume continues in the right one. Sizes are padded to the
# factor 2**(3 downsamplings + 1 enhancer) = 16 and cropped back.
_base_ = ["./pix2pixhd-slim_1xb4-1000it_camvid-120x160.py"]

size_hw = (180, 240)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="ValidateSegLabels", num_classes=11, void_values=[11]),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
model = dict(
    overrides=dict(n_local_enhancers=1, n_blocks_local=3),
    global_only_iters=400,
    local_only_iters=200,
    data_preprocessor=dict(size=size_hw),
)
