# Baseline: the plain segmentor of the main job.
_base_ = [
    "../_base_/models/fcn_unet-s4.py",
    "../_base_/datasets/camvid.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_cpu_short.py",
]
randomness = dict(seed=0)
