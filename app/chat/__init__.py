"""The chat: the pane (prompt, controls), the transcript view and its Markdown rendering."""
