"""Get models from the Hugging Face Hub: search, a memory verdict before downloading, and
resumable, checked downloads into the HF cache. Qt-free; the GUI drives `DownloadQueue` and
`judge(..., on_result=...)` from worker threads.

Modules: `client` (search, listings, errors as sentences), `names` (files grouped into
models), `remote` (headers by range requests), `verdict` (fit on this machine), `download`
(one model into the cache) and `jobs` (the queue).
"""
