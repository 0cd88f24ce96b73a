"""Networks: point-voxel blocks, the U-Net denoiser, the image encoder and conditioning."""

from pvd.nn.condition import Condition
from pvd.nn.embeddings import ConditionConfig
from pvd.nn.encoder import EncoderConfig, ImageEncoder
from pvd.nn.unet import PRESETS, DownLevel, PVDUNet, UNetConfig, UpLevel, preset

__all__ = ["PRESETS", "Condition", "ConditionConfig", "DownLevel", "EncoderConfig", "ImageEncoder", "PVDUNet",
           "UNetConfig", "UpLevel", "preset"]
