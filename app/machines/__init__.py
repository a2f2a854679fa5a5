"""The Machines dock: llama.cpp RPC workers (app.machines.dock)."""
