"""The "Get models" pane: search the Hugging Face Hub, a memory verdict per file before any
download, and a download queue whose finished models land in the sidebar's library.

Modules: `text` (numbers and verdicts as words), `files_view` (a repository's models, their
verdicts streamed in), `downloads_view` (the queue's rows) and `pane` (search, the dock).
"""
