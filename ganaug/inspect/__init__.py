"""Dataset diagnosis: what kind of imbalance a dataset has, and which ganaug technique fits.

``inspect_dataset(path)`` detects the layout (COCO JSON, image + label-map folders,
class-folder tree), streams over it once and returns a JSON-ready report dict; see
:mod:`ganaug.inspect.report` for the outputs and :mod:`ganaug.inspect.recommend` for the
rules behind the recommendations.
"""

from ganaug.inspect._common import InspectError
from ganaug.inspect.api import inspect_dataset
from ganaug.inspect.formats import detect_format

__all__ = ["InspectError", "detect_format", "inspect_dataset"]
