# The main job's baseline segmentor, trained on real CamVid mixed with a Pix2PixHD
# synthetic set (written by `ganaug synth`): same model, schedule and batch as the baseline,
# 30% of the samples of each pass synthetic.
_base_ = ["../adv_seg/fcn_unet-s4_1xb8-600it_camvid-120x160.py"]
custom_imports = dict(imports=["ganaug.mmseg"], allow_failed_imports=False)

synthetic_root = "{{$GANAUG_P2P_SYNTH:work_dirs/p2p/synth}}"
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type="MixedRealSyntheticDataset",
        real=dict(
            type="CamVidDataset",
            data_root={{_base_.data_root}},
            data_prefix=dict(img_path="train", seg_map_path="trainannot"),
            pipeline={{_base_.train_pipeline}},
        ),
        synthetic=dict(
            type="CamVidDataset",
            data_root=synthetic_root,
            data_prefix=dict(img_path="images", seg_map_path="labels"),
            pipeline={{_base_.train_pipeline}},
        ),
        ratio=0.3,
        seed=0,
    )
)
