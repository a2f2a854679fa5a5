# Types of the native module built from engine/child/rowsample.c (see its comment for what it does).
def sample(
    rows: int,
    n_vocab: int,
    n_rows: int,
    chains: int,
    ks: int,
    out: int,
    apply: int,
    accept: int,
    n_threads: int,
    ids: int = ...,  # per row, the device's candidate ids (0: whole rows; engine.child.device_cut)
    counts: int = ...,
) -> None: ...
def prewake(n_threads: int, delay_us: int, spin_us: int) -> None: ...
def layout() -> tuple[int, int, int, int]: ...
def threaded() -> bool: ...
def live_buffers(at_most: int = ..., timeout_s: float = ...) -> int: ...  # for tests (rowsample.c)
def row_pass(name: str | None = ...) -> str: ...  # "avx" or "portable"; a name selects it
