"""Reading task files: in a short-lived child, into a catalog (data); the import path they use."""
