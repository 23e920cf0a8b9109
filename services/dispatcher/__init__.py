"""The dispatcher (DESIGN.md §4): trigger events become runs; the engine's commands
become messages to agents; agents' results drive the engine on."""
