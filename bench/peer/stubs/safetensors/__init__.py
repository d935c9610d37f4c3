"""Offline stand-in for safetensors: the peers never load or save weights."""
from . import torch  # noqa: F401
