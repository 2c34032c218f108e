"""Pure domain: documents, templates and progression rules. No I/O here."""
