"""The Memory dock: live telemetry dashboard, cache and split settings, the KV precision check."""
