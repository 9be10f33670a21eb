"""mode-policy: Mixture-of-Denoising-Experts diffusion policies (Reuss et al., ICLR 2025)."""

from .model.config import PRESETS, MoDEConfig, get_preset
from .model.diffusion import SamplingSettings
from .policy import MoDEPolicy
from .training.config import TrainConfig

__all__ = ["PRESETS", "MoDEConfig", "MoDEPolicy", "SamplingSettings", "TrainConfig", "get_preset"]
__version__ = "0.2.0"
