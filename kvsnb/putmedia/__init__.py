"""PutMedia from Python: the streaming PutMedia client, the file fragmenter that turns a
media file into a producer's Matroska, and ``import_file``, which joins the two (what
``kvsnb import`` runs)."""

from kvsnb.putmedia.importer import (
    Ack,
    FilePlan,
    ImportResult,
    PutMediaError,
    file_fragments,
    import_file,
    import_file_async,
    plan_file,
    put_media,
)

__all__ = [
    "Ack",
    "FilePlan",
    "ImportResult",
    "PutMediaError",
    "file_fragments",
    "import_file",
    "import_file_async",
    "plan_file",
    "put_media",
]
