"""Weight-level diff (SPEC §2–§5): per-tensor metrics and the streaming, resumable driver."""
