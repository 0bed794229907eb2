"""Environment files: the schema, loading with file:line errors, and the vault secrets.

Loading an environment reads files only; nothing on the machine or on a host changes.
"""
