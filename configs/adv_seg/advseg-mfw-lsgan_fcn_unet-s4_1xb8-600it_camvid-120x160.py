# Class-weighted variant: median-frequency weighted cross-entropy plus an LSGAN critic.
_base_ = ["./advseg-vanilla_fcn_unet-s4_1xb8-600it_camvid-120x160.py"]

model = dict(
    adv_loss_type="lsgan",
    segmentor=dict(
        decode_head=dict(
            loss_decode=dict(
                _delete_=True,
                type="WeightedCrossEntropyLoss",
                class_weight=dict(
                    type="median_frequency",
                    seg_map_dir="{{$GANAUG_DATA_ROOT:../shared/data}}/camvid/trainannot",
                    num_classes=11,
                    void_values=[11],
                    max_weight=10.0,  # Bicyclist would get ~20x otherwise
                ),
            )
        )
    ),
)
