"""Step functions over each runtime, all speaking the static KV-cache convention of edgedistil.model."""
