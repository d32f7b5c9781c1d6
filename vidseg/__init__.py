"""vidseg: Mask R-CNN instance segmentation over live and recorded video."""
__version__ = "0.1.0"
