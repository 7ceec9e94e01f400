"""A task module with one trivial task: what bench/child_start.py's pool children import."""


def noop() -> None:
    """Do nothing."""
