"""gifd: measure how much private data leaks from the updates a federated-learning client shares.

The core is GIFD (Fang et al., ICCV 2023), a generative gradient inversion attack that searches a
GAN's latent space and then its intermediate feature maps, with the IG, GI, GGL and GIAS baselines.
"""

from gifd.errors import GifdError

__version__ = "0.2.0"
__all__ = ["GifdError", "__version__"]
