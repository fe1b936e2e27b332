"""The embedded default: a small synthetic chat world, its own tokenizer and model, feedback specs
and an offline teacher, so the whole C3PO job runs on a CPU with no network and no API key."""
