# The short CPU run behind the README numbers: 400 iters x batch 2 = 800 pairs seen, about
# 2.2 passes over the 367 training frames. Expect blurry, roughly laid-out images.
_base_ = ["./pix2pixhd-slim_1xb4-1000it_camvid-120x160.py"]
train_dataloader = dict(batch_size=2)
train_cfg = dict(max_iters=400)
default_hooks = dict(checkpoint=dict(interval=100))
custom_hooks = [dict(type="Pix2PixHDSampleHook", interval=100, num_samples=4)]
