"""mode-policy: Mixture-of-Denoising-Experts diffusion policies (Reuss et al., ICLR 2025)."""

from .config import MoDEConfig, get_preset
from .policy import MoDEPolicy

__all__ = ["MoDEConfig", "MoDEPolicy", "get_preset"]
__version__ = "0.1.0"
