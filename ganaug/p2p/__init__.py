"""Command-line entry points of the Pix2PixHD rebalancing workflow (issue 5).

``ganaug rebalance`` builds rebalanced label maps and their distribution report,
``ganaug synth`` also translates them to images with a trained generator and writes the
synthetic set, ``ganaug p2p-fid`` scores a synthetic set against real images.
"""
