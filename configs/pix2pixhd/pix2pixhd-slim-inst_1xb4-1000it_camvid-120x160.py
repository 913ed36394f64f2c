# Slim Pix2PixHD with the paper's instance-wise feature encoder (Sec. 3.4) on CamVid 120x160.
# CamVid has no instance maps: each class region of a frame acts as one instance, so E learns
# one 3-d style code per class and frame. E trains with G (same Adam settings, stepped after
# G's backward pass); Pix2PixHDFeatureBankHook clusters E's codes per class (k-means, 10
# centres) before every checkpoint, and `ganaug synth` draws a centre per class region from
# that bank. 1000 iters x batch 4 = 4000 pairs, about 11 passes over the 367 frames.
_base_ = ["./pix2pixhd-slim_1xb4-1000it_camvid-120x160.py"]

model = dict(use_encoder=True, feat_dim=3, encoder_cfg=dict(ngf=16, n_downsample=4))
optim_wrapper = dict(
    encoder=dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=2e-4, betas=(0.5, 0.999)))
)
custom_hooks = [
    dict(type="Pix2PixHDSampleHook", interval=250, num_samples=4),
    # Same interval as the checkpoint hook, so that every checkpoint carries a fresh bank.
    dict(type="Pix2PixHDFeatureBankHook", interval=250, num_clusters=10),
]
