"""The pure core: spec and observed objects in, desired objects and status out. No I/O here."""
