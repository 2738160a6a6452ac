"""Generated artifacts (CRD, chart copies, docs, dashboards) from their single sources."""
