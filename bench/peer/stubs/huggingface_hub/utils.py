class EntryNotFoundError(Exception):
    pass


class RepositoryNotFoundError(Exception):
    pass


class RevisionNotFoundError(Exception):
    pass


def validate_hf_hub_args(fn):
    return fn


def is_jinja_available():
    return False


from . import __getattr__  # noqa: F401,E402
