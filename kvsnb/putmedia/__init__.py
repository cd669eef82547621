"""PutMedia from Python: the streaming PutMedia client (``client``), the file producer that
turns a media file into a producer's Matroska (``fragmenter``), and ``import_file``, which
joins the two with a progress bar (``importer``; what ``kvsnb import`` runs)."""

from kvsnb.putmedia.client import Ack, PutMediaError, put_media
from kvsnb.putmedia.fragmenter import FilePlan, file_fragments, plan_file
from kvsnb.putmedia.importer import ImportResult, import_file, import_file_async

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
