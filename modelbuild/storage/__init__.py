"""The parts :class:`modelbuild.store.Store` is made of, one responsibility each.

:mod:`modelbuild.store` is the store's one door (every blob and every tag is written
through :class:`~modelbuild.store.Store`); it is built from :mod:`.files` (the file-system
calls under it, each failure a :class:`~modelbuild.errors.StoreError` naming the file) and
:mod:`.tags` (``index.json``: the tags, rewritten atomically under a lock).
"""
