"""Tasks of the memory-bound fault tests (tests/faults/test_memory_*.py)."""


def blob(n: int) -> str:
    """A result of ``n`` bytes."""
    return "x" * n


def echo(value: object) -> object:
    return value
