"""The store's revisions, one file each, named ``NNNN_what.py`` (see server/migrations)."""
