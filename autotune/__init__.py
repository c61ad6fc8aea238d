"""autotune: find the best way to deploy a language model on this GPU, by measurement."""

from autotune.deploy import load_deployment, read_deployment

__all__ = ["load_deployment", "read_deployment"]
__version__ = "0.1.0"
