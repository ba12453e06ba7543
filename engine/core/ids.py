"""Sample ids: 'r<run seed>-<index, 8 digits>'. Stable across runs, sortable, and the index is
recoverable (a corpus plan's index is the report's position in the corpus)."""


def sample_id(seed: int, index: int) -> str:
    return f"r{seed}-{index:08d}"


def sample_index(sample: str) -> int:
    """'r0-00000042' -> 42."""
    return int(str(sample).rsplit("-", 1)[1])
