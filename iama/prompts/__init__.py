"""The shipped prompt sets (*.jsonl, read by iama.data) and the scripts that generate some of them."""
