REGEX_COMMIT_HASH = r"^[0-9a-f]{40}$"
from . import __getattr__  # noqa: F401,E402  (anything else: stub callables)
