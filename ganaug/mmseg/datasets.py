"""CamVid for mmsegmentation, with input checks that name the offending file."""

from __future__ import annotations

import os
import os.path as osp

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ganaug.core.label_stats import check_image_file
from ganaug.datasets import camvid

CAMVID_CLASSES = camvid.CLASSES
CAMVID_PALETTE = [list(c) for c in camvid.PALETTE]
# CamVid's label 11 marks void pixels; ValidateSegLabels maps it to mmseg's ignore index.
CAMVID_VOID = camvid.VOID


@DATASETS.register_module()
class CamVidDataset(BaseSegDataset):
    """CamVid (11-class SegNet version): ``<root>/{train,val,test}`` images with labels in
    ``<root>/{train,val,test}annot`` (same file names, single-channel PNG).

    Unlike :class:`BaseSegDataset`, the listing is strict: every file in the image folder
    must be an image with a label map beside it, otherwise a ``ValueError`` names the file.
    Pair the pipeline's ``LoadAnnotations`` with ``ValidateSegLabels`` to map void (11) to
    255 and to check label values and sizes per sample.
    """

    METAINFO = dict(classes=CAMVID_CLASSES, palette=CAMVID_PALETTE)

    def __init__(self, img_suffix: str = ".png", seg_map_suffix: str = ".png", **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

    def load_data_list(self) -> list[dict]:
        img_dir = self.data_prefix.get("img_path", None)
        ann_dir = self.data_prefix.get("seg_map_path", None)
        if not img_dir or not osp.isdir(img_dir):
            raise FileNotFoundError(
                f"CamVidDataset: image folder {img_dir!r} does not exist (data_root="
                f"{self.data_root!r}); set GANAUG_DATA_ROOT or the config's data_root"
            )
        if ann_dir is not None and not osp.isdir(ann_dir):
            raise FileNotFoundError(f"CamVidDataset: label folder {ann_dir!r} does not exist")
        names = sorted(n for n in os.listdir(img_dir) if not n.startswith("."))
        data_list = []
        for name in names:
            img_path = osp.join(img_dir, name)
            if osp.isdir(img_path):
                continue
            check_image_file(img_path)
            info = dict(
                img_path=img_path,
                label_map=self.label_map,
                reduce_zero_label=self.reduce_zero_label,
                seg_fields=[],
            )
            if ann_dir is not None:
                stem = name[: -len(osp.splitext(name)[1])]
                seg_path = osp.join(ann_dir, stem + self.seg_map_suffix)
                if not osp.isfile(seg_path):
                    raise FileNotFoundError(
                        f"CamVidDataset: image {img_path} has no label map (expected {seg_path})"
                    )
                info["seg_map_path"] = seg_path
            data_list.append(info)
        if not data_list:
            raise ValueError(f"CamVidDataset: no images found in {img_dir}")
        return data_list
