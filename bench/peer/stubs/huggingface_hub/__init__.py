"""Offline stand-in for huggingface_hub (not installable here: no Debian package, no PyPI).

Only what diffusers 0.27.2 imports at module level. The UNet/VAE peers build models
from configs with random weights, so nothing here is ever called to download;
every callable raises if it is.
"""
__version__ = "0.20.3"  # a version diffusers 0.27.2 accepts; this is a stub, not that release


def _unavailable(name):
    def fn(*args, **kwargs):
        raise RuntimeError(f"huggingface_hub.{name} is stubbed for the offline peer")
    fn.__name__ = name
    return fn


class _StubClass:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} is stubbed for the offline peer")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    if name[:1].isupper():
        return type(name, (_StubClass,), {})
    return _unavailable(name)
