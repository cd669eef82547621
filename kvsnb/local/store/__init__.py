"""The fragment store: fragment files and their SQLite index (``fragments``), and the
Matroska that fragments are written and served in (``mkv``).

Uses ``core`` only. A fragment is listed only once its file and index row are durable.
"""
