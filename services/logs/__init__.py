"""The log collector: log batches from RY_LOGS into one Redis stream per step."""
