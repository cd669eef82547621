"""GetImages' decoding: one task per stored fragment, rendered in worker processes.

A task names a fragment file and the samples that fall in it (page slot, producer time); the
fragment's video is demuxed by our own Matroska reader, each sample's frame is decoded from
the keyframe before it (each GOP once, stopping at its last sample); only the frames sampled
are converted, straight to the output size and RGB in one swscale pass, and encoded as JPEG or
PNG. ``DecodePool`` runs tasks in ``DECODE_PROCESSES`` worker processes (one task at
a time each, in the order submitted) so that decoding and encoding use every core, free of
the server's GIL; with ``KVSNB_DECODE_PROCESSES=0`` they run on threads of the server process
instead. Each process keeps small caches of demuxed fragments and of decoders left mid-GOP.
See docs/design.md, "Local KVS".
"""

from __future__ import annotations

import base64
import bisect
import concurrent.futures
import io
import itertools
import logging
import os
import pickle
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import av
from av.video.reformatter import VideoReformatter
from PIL import Image  # Pillow: a dependency of matplotlib, itself a kvsnb dependency

from kvsnb.local.core import frames
from kvsnb.wire import ebml

logger = logging.getLogger(__name__)

ERROR_NO_MEDIA = "NO_MEDIA"
ERROR_MEDIA = "MEDIA_ERROR"
FORMAT_PNG = "PNG"
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 is the fastest zlib setting
VIDEO_CODEC_ID = "V_MPEG4/ISO/AVC"
DECODER_CACHE_SIZE = 4
MEDIA_CACHE_SIZE = 8
PROCESSES_ENV = "KVSNB_DECODE_PROCESSES"


def decode_processes() -> int:
    """How many decode processes GetImages uses: ``KVSNB_DECODE_PROCESSES`` if set (0 for
    threads in the server process), else one per core (at least 2)."""
    raw = os.environ.get(PROCESSES_ENV, "").strip()
    if raw:
        if not raw.isdigit():
            raise ValueError(f"{PROCESSES_ENV} must be a whole number; got {raw!r}")
        return int(raw)
    return max(2, os.cpu_count() or 2)


# ---------------------------------------------------------------------------- tasks


@dataclass(frozen=True, slots=True)
class EncodeSpec:
    """How images are encoded: JPEG or PNG, JPEG quality, and the size (None: as stored)."""

    image_format: str
    quality: int
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class FragmentTask:
    """The samples of one request that fall in one fragment: (slot, producer ms) each."""

    path: str
    samples: tuple[tuple[int, int], ...]
    spec: EncodeSpec
    generation: int = 0  # a newer generation makes a process drop its caches first


@dataclass(slots=True)
class TaskResult:
    """Per slot, the base64 image or the error code; and how many frames were decoded."""

    images: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    decoded: int = 0

    @classmethod
    def failed(cls, task: FragmentTask, error: str = ERROR_MEDIA) -> TaskResult:
        """Every sample of ``task`` with ``error``."""
        return cls(errors={slot: error for slot, _ in task.samples})


# ---------------------------------------------------------------------------- media


class MediaError(Exception):
    """A fragment cannot give an image (unreadable, no video track, undecodable)."""


@dataclass(frozen=True, slots=True)
class FragmentMedia:
    """The video access units of one fragment file, in decode order."""

    path: Path
    extradata: bytes | None
    data: tuple[bytes, ...]
    pts: tuple[int, ...]  # producer epoch ms
    keyframes: tuple[int, ...]  # packet indices of keyframes, ascending
    monotonic: bool  # pts strictly increasing in decode order (no reordering)

    def frame_at(self, t_ms: int) -> int | None:
        """Index of the frame shown at producer time ``t_ms`` (last pts ≤ t), or None."""
        if self.monotonic:
            i = bisect.bisect_right(self.pts, t_ms) - 1
            return i if i >= 0 else None
        best: int | None = None
        for i, p in enumerate(self.pts):
            if p <= t_ms and (best is None or p > self.pts[best]):
                best = i
        return best

    def keyframe_before(self, index: int) -> int | None:
        """The last keyframe at or before packet ``index``, or None."""
        k = bisect.bisect_right(self.keyframes, index) - 1
        return self.keyframes[k] if k >= 0 else None


def load_media(path: Path) -> FragmentMedia:
    """Read a stored fragment's H.264 track (no decoding). ``MediaError`` if impossible."""
    try:
        parser = ebml.PushParser()
        events = parser.feed(path.read_bytes()) + parser.end()
    except (OSError, ebml.MkvError) as exc:
        raise MediaError(f"cannot read {path.name}: {exc}") from exc
    header: ebml.StreamHeader | None = None
    track: ebml.TrackSpec | None = None
    cluster_ticks = 0
    data: list[bytes] = []
    ticks: list[int] = []
    keys: list[int] = []
    for event in events:
        if isinstance(event, ebml.HeaderEvent):
            header = event.header
            track = next(
                (t for t in header.tracks if t.kind == "video" and t.codec_id == VIDEO_CODEC_ID),
                None,
            )
        elif isinstance(event, ebml.ClusterTimecode):
            cluster_ticks = event.timecode
        elif isinstance(event, ebml.Block) and track is not None and event.track == track.number:
            if not event.data:
                continue
            if event.keyframe:
                keys.append(len(data))
            data.append(event.data)
            ticks.append(cluster_ticks + event.relative_timecode)
    if header is None or track is None:
        raise MediaError(f"{path.name} has no H.264 track")
    scale = header.timecode_scale_ns
    pts = [t * scale // 1_000_000 for t in ticks]
    return FragmentMedia(
        path=path,
        extradata=track.codec_private or None,
        data=tuple(data),
        pts=tuple(pts),
        keyframes=tuple(keys),
        monotonic=all(a < b for a, b in itertools.pairwise(pts)),
    )


@dataclass(slots=True)
class _Decoder:
    """An H.264 decoder positioned after packet ``position`` of one fragment's GOP."""

    path: Path
    keyframe: int
    position: int
    context: Any
    extradata: bytes | None
    last: Any = None  # the last av.VideoFrame output

    @classmethod
    def open(cls, media: FragmentMedia, keyframe: int, context: Any = None) -> _Decoder:
        """A decoder at ``keyframe``: on ``context`` (an idle one made for the same
        extradata, flushed here) or on a new one."""
        if context is None:
            context = av.CodecContext.create("h264", "r")
            if media.extradata:
                context.extradata = media.extradata
            context.thread_count = 1  # parallelism comes from decoding fragments side by side
        else:
            context.flush_buffers()
        return cls(media.path, keyframe, keyframe - 1, context, media.extradata)


_reformatters = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's reformatter. PyAV's ``VideoFrame.reformat`` makes a new swscale context
    for every frame (about 1 ms at 640x480, more than the conversion itself); one
    reformatter keeps its context while the source and output stay the same."""
    found: VideoReformatter | None = getattr(_reformatters, "value", None)
    if found is None:
        found = _reformatters.value = VideoReformatter()
    return found


def encode_image(frame: Any, spec: EncodeSpec) -> str:
    """Scale a decoded frame as asked and encode it: base64 of the JPEG or PNG bytes.
    Conversion to RGB and scaling are one swscale pass (bilinear, one thread: parallelism
    comes from the decode processes)."""
    rgb = _reformatter().reformat(
        frame, width=spec.width, height=spec.height, format="rgb24", threads=1
    )
    image = Image.fromarray(rgb.to_ndarray(), "RGB")
    buffer = io.BytesIO()
    if spec.image_format == FORMAT_PNG:
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, "JPEG", quality=spec.quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class FragmentRenderer:
    """Renders ``FragmentTask``s (thread-safe; one per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._media: OrderedDict[Path, FragmentMedia] = OrderedDict()
        self._decoders: OrderedDict[tuple[Path, int], _Decoder] = OrderedDict()
        # codec contexts no decoder uses, by extradata: opening an H.264 decoder costs about
        # as much as decoding a keyframe, and at 1 s keyframes every sample starts a GOP
        self._idle: list[tuple[bytes | None, Any]] = []
        self._generation = 0

    def render(self, task: FragmentTask) -> TaskResult:
        """The images (or errors) of the task's samples."""
        self._refresh(task.generation)
        try:
            media = self._load(Path(task.path))
        except MediaError as exc:
            logger.warning("GetImages: %s", exc)
            return TaskResult.failed(task)
        if not media.pts:
            return TaskResult.failed(task)  # the fragment holds no video frame
        result = TaskResult()
        runs: dict[int, dict[int, list[int]]] = {}  # keyframe → frame index → slots
        for slot, t_ms in task.samples:
            index = media.frame_at(t_ms)
            keyframe = None if index is None else media.keyframe_before(index)
            if index is None:
                result.errors[slot] = ERROR_NO_MEDIA
            elif keyframe is None:
                result.errors[slot] = ERROR_MEDIA  # no keyframe to start decoding from
            else:
                runs.setdefault(keyframe, {}).setdefault(index, []).append(slot)
        for keyframe in sorted(runs):
            self._decode_run(media, keyframe, runs[keyframe], task.spec, result)
        return result

    def _refresh(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                self._generation = generation
                self._media.clear()
                self._decoders.clear()
                self._idle.clear()

    def _load(self, path: Path) -> FragmentMedia:
        with self._lock:
            found = self._media.get(path)
            if found is not None:
                self._media.move_to_end(path)
                return found
        media = load_media(path)
        with self._lock:
            self._media[path] = media
            while len(self._media) > MEDIA_CACHE_SIZE:
                self._media.popitem(last=False)
        return media

    def _take_decoder(self, media: FragmentMedia, keyframe: int, first: int) -> _Decoder:
        """The kept decoder of this GOP if it has not passed ``first``, else a decoder at the
        keyframe on an idle context (or a new one)."""
        with self._lock:
            decoder = self._decoders.pop((media.path, keyframe), None)
            if decoder is not None and decoder.position <= first:
                return decoder
            if decoder is not None:
                self._idle_locked(decoder)
            context = next(
                (i for i, (extra, _) in enumerate(self._idle) if extra == media.extradata), None
            )
            idle = self._idle.pop(context)[1] if context is not None else None
        return _Decoder.open(media, keyframe, idle)

    def _keep_decoder(self, decoder: _Decoder) -> None:
        with self._lock:
            self._decoders[(decoder.path, decoder.keyframe)] = decoder
            while len(self._decoders) > DECODER_CACHE_SIZE:
                self._idle_locked(self._decoders.popitem(last=False)[1])

    def _release_decoder(self, decoder: _Decoder) -> None:
        with self._lock:
            self._idle_locked(decoder)

    def _idle_locked(self, decoder: _Decoder) -> None:
        """Keep a decoder's context for the next GOP (the lock held)."""
        self._idle.append((decoder.extradata, decoder.context))
        del self._idle[:-DECODER_CACHE_SIZE]

    def _decode_run(
        self,
        media: FragmentMedia,
        keyframe: int,
        wanted: dict[int, list[int]],
        spec: EncodeSpec,
        result: TaskResult,
    ) -> None:
        """Decode one GOP from its keyframe up to its last wanted frame, encoding each."""
        targets = sorted(wanted)
        decoder = self._take_decoder(media, keyframe, targets[0])
        wanted_pts = {media.pts[i]: wanted[i] for i in targets}
        done: set[int] = set()

        def emit(frame: Any) -> None:
            slots = wanted_pts.get(frame.pts)
            if slots is None or frame.pts in done:
                return
            done.add(frame.pts)
            content = encode_image(frame, spec)
            for slot in slots:
                result.images[slot] = content

        try:
            if decoder.last is not None and decoder.last.pts in wanted_pts:
                emit(decoder.last)
            flushed = False
            for target in targets:
                while media.pts[target] not in done and not flushed:
                    if decoder.position + 1 < len(media.data):
                        decoder.position += 1
                        packet = av.Packet(media.data[decoder.position])
                        packet.pts = media.pts[decoder.position]
                        decoded = decoder.context.decode(packet)
                    else:
                        decoded = decoder.context.decode(None)
                        flushed = True
                    for frame in decoded:
                        result.decoded += 1
                        decoder.last = frame
                        emit(frame)
            if flushed:
                self._release_decoder(decoder)
            else:
                self._keep_decoder(decoder)
        except (av.FFmpegError, ValueError) as exc:  # its context is not used again
            logger.warning("GetImages: decoding %s failed: %s", media.path.name, exc)
        for index in targets:
            for slot in wanted[index]:
                if slot not in result.images:
                    result.errors[slot] = ERROR_MEDIA


# ---------------------------------------------------------------------------- processes


class _WorkerProcess:
    """One decode process and its pipes (used by one pool thread at a time)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            frames.worker_command(__name__, "worker_main"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            process_group=0,  # a terminal's Ctrl-C reaches the server only; EOF ends it
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout

    def call(self, task: FragmentTask) -> TaskResult:
        self.stdin.write(frames.pack(task))
        self.stdin.flush()
        result = frames.read_blocking(self.stdout)
        if not isinstance(result, TaskResult):
            raise EOFError(f"decode process answered {type(result).__name__}")
        return result


class DecodePool:
    """Runs ``FragmentTask``s in order on ``processes`` worker processes (started on first
    use, replaced when one dies; each ends when this process closes its input), or on
    threads of this process when ``processes`` is 0."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, processes or (os.cpu_count() or 2)),
            thread_name_prefix="kvsnb-decode",
        )
        self._local = threading.local()
        self._workers: list[_WorkerProcess] = []
        self._lock = threading.Lock()
        self._in_process = FragmentRenderer()

    @property
    def pids(self) -> list[int]:
        """Process ids of the running decode processes (none before first use or with
        ``processes`` 0); a process that died is replaced on the next task it would run."""
        with self._lock:
            return [w.proc.pid for w in self._workers if w.proc.poll() is None]

    def submit(self, task: FragmentTask) -> concurrent.futures.Future[TaskResult]:
        """Queue a task; its future gives the result (never raises for bad media)."""
        return self._executor.submit(self._run, task)

    def _run(self, task: FragmentTask) -> TaskResult:
        if not self.processes:
            return self._in_process.render(task)
        worker: _WorkerProcess | None = getattr(self._local, "worker", None)
        try:
            if worker is None or worker.proc.poll() is not None:
                worker = _WorkerProcess()
                self._local.worker = worker
                with self._lock:
                    self._workers.append(worker)
            return worker.call(task)
        except (OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            logger.warning("GetImages: a decode process failed: %s", exc)
            self._local.worker = None
            if worker is not None:
                worker.proc.kill()
            return TaskResult.failed(task)


_pool_lock = threading.Lock()
_pool: DecodePool | None = None


def shared_pool() -> DecodePool:
    """The process-wide decode pool (shared by every Local KVS in this process)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = DecodePool(decode_processes())
        return _pool


def worker_main() -> None:
    """Entry point of a decode process: render each task read from stdin until it closes."""
    out = os.fdopen(os.dup(1), "wb")  # the pipe to the server; stray output goes to stderr
    os.dup2(2, 1)
    logging.basicConfig(
        stream=sys.stderr,
        format=f"decode process {os.getpid()}: %(levelname)s %(name)s: %(message)s",
    )
    renderer = FragmentRenderer()
    source = sys.stdin.buffer
    while True:
        try:
            task = frames.read_blocking(source)
        except EOFError:
            return
        try:
            result = renderer.render(task)
        except Exception:
            logger.exception("GetImages: rendering %s failed", getattr(task, "path", task))
            result = TaskResult.failed(task)
        out.write(frames.pack(result))
        out.flush()
