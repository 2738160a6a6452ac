"""Reference trainers run by the operator's example manifests."""
