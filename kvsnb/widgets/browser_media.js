// The page's half of BrowserSession's kernel path (see kvsnb/widgets/browser_media.py).
//
// Plain function declarations, no import/export: the widget's Python concatenates this file in
// front of its ES module (browser_session.js), which calls
//   kvsnbKernelMaster(stream, sendBytes, log, onBytes)          -> Promise<{stop, info}>
//   kvsnbKernelViewer(canvas, onBytes, micStream, sendBytes, log) -> Promise<{stop, info}>
// sendBytes(ArrayBuffer) sends a binary message to the kernel over the bridge; onBytes(fn)
// registers fn(Uint8Array) for the kernel's binary messages; log(text) shows a line.
//
// Every binary message is one chunk (kvsnb.sources.encoded): a 10-byte header, kind (u8),
// flags (u8, bit 0 keyframe), capture time in epoch microseconds (u64, big-endian), then the
// payload. The first chunk says what the page sends (kind 16, JSON); the kernel asks for a
// keyframe with kind 17.
//
// MASTER: WebCodecs VideoEncoder, H.264 Constrained Baseline (avc1.42e01f), Annex B, a
// keyframe every KVSNB_KEYFRAME_MS or when the kernel asks; AudioEncoder Opus 48 kHz mono.
// Without an H.264 encoder the page sends JPEG pictures of the camera (the kernel encodes);
// without an Opus encoder, PCM s16le mono 48 kHz (the kernel encodes).
// VIEWER: the kernel sends the master's frames as JPEG pictures, drawn on the canvas (the
// newest only); the microphone goes up as for the master.

const KVSNB_CHUNK = { H264: 1, OPUS: 2, JPEG: 3, PCM: 4, INFO: 16, KEYFRAME_REQUEST: 17 };
const KVSNB_KEYFRAME_MS = 2000;  // a keyframe at least this often (fragments cut on keyframes)
const KVSNB_VIDEO_BPS = 800000;  // under the storage session's 1 Mbps with Opus
const KVSNB_AUDIO_BPS = 48000;
const KVSNB_MAX_ENCODE_QUEUE = 3;  // frames waiting in the encoder; beyond, a frame is skipped
const KVSNB_JPEG_QUALITY = 0.8;
const KVSNB_FALLBACK_FPS = 15;  // JPEG pictures a second when the browser has no H.264 encoder

function kvsnbNowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

function kvsnbPackChunk(kind, key, timestampUs, payload) {
  const body = payload instanceof Uint8Array ? payload : new Uint8Array(payload || new ArrayBuffer(0));
  const out = new Uint8Array(10 + body.byteLength);
  const view = new DataView(out.buffer);
  view.setUint8(0, kind);
  view.setUint8(1, key ? 1 : 0);
  view.setBigUint64(2, BigInt(Math.max(0, Math.round(timestampUs))));
  out.set(body, 10);
  return out.buffer;
}

function kvsnbParseChunk(data) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (bytes.byteLength < 10) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    kind: view.getUint8(0),
    key: (view.getUint8(1) & 1) === 1,
    timestampUs: Number(view.getBigUint64(2)),
    payload: bytes.subarray(10),
  };
}

function kvsnbSendInfo(sendBytes, info) {
  sendBytes(kvsnbPackChunk(KVSNB_CHUNK.INFO, false, kvsnbNowUs(), new TextEncoder().encode(JSON.stringify(info))));
}

// Epoch µs of a WebCodecs timestamp: the offset between the track's clock and the wall clock
// is taken at the first frame, so the capture times stay as smooth as the track's.
function kvsnbClock() {
  let offset = null;
  return (timestampUs) => {
    if (offset === null) offset = kvsnbNowUs() - timestampUs;
    return timestampUs + offset;
  };
}

// Reads a track's frames (VideoFrame or AudioData) with MediaStreamTrackProcessor; onFrame
// must close each. Returns {stop}.
function kvsnbReadTrack(track, onFrame, log) {
  const processor = new MediaStreamTrackProcessor({ track });
  const reader = processor.readable.getReader();
  let running = true;
  (async () => {
    while (running) {
      let result;
      try { result = await reader.read(); } catch (e) { if (running) log(`track read: ${e}`); break; }
      if (result.done) break;
      if (!running) { result.value.close(); break; }
      try { onFrame(result.value); } catch (e) { log(`frame: ${e}`); try { result.value.close(); } catch (_) {} }
    }
  })();
  return { stop: () => { running = false; reader.cancel().catch(() => {}); } };
}

async function kvsnbH264Config(width, height) {
  if (typeof VideoEncoder === "undefined") return null;
  const config = {
    codec: "avc1.42e01f", width, height, bitrate: KVSNB_VIDEO_BPS, framerate: 30,
    latencyMode: "realtime", avc: { format: "annexb" },
  };
  try {
    const support = await VideoEncoder.isConfigSupported(config);
    return support.supported ? config : null;
  } catch (e) {
    return null;
  }
}

async function kvsnbOpusConfig() {
  if (typeof AudioEncoder === "undefined") return null;
  const config = { codec: "opus", sampleRate: 48000, numberOfChannels: 1, bitrate: KVSNB_AUDIO_BPS };
  try {
    const support = await AudioEncoder.isConfigSupported(config);
    return support.supported ? config : null;
  } catch (e) {
    return null;
  }
}

// The camera as H.264 access units (WebCodecs). Returns {stop, requestKeyframe}.
function kvsnbEncodeH264(track, config, sendBytes, log) {
  const toEpoch = kvsnbClock();
  let lastKey = -Infinity;
  let wantKey = true;
  let width = config.width, height = config.height;
  const encoder = new VideoEncoder({
    output: (chunk) => {
      const data = new Uint8Array(chunk.byteLength);
      chunk.copyTo(data);
      sendBytes(kvsnbPackChunk(KVSNB_CHUNK.H264, chunk.type === "key", toEpoch(chunk.timestamp), data));
    },
    error: (e) => log(`H.264 encoder: ${e}`),
  });
  encoder.configure(config);
  const reading = kvsnbReadTrack(track, (frame) => {
    if (encoder.state !== "configured" || encoder.encodeQueueSize > KVSNB_MAX_ENCODE_QUEUE) {
      frame.close();
      wantKey = true;  // a skipped frame: the next one starts clean
      return;
    }
    if (frame.codedWidth && (frame.displayWidth !== width || frame.displayHeight !== height)) {
      width = frame.displayWidth; height = frame.displayHeight;
      encoder.configure({ ...config, width, height });
      wantKey = true;
    }
    const now = performance.now();
    const keyFrame = wantKey || now - lastKey >= KVSNB_KEYFRAME_MS;
    if (keyFrame) { lastKey = now; wantKey = false; }
    encoder.encode(frame, { keyFrame });
    frame.close();
  }, log);
  return {
    stop: () => { reading.stop(); if (encoder.state !== "closed") encoder.close(); },
    requestKeyframe: () => { wantKey = true; },
  };
}

// The camera as JPEG pictures (no H.264 encoder in this browser), at most
// KVSNB_FALLBACK_FPS a second, each camera frame at most once: read with
// MediaStreamTrackProcessor where there is one, else from a <video> whose decoded-frame count
// must have moved. Returns {stop, requestKeyframe}.
function kvsnbEncodeJpeg(track, sendBytes, log) {
  const canvas = document.createElement("canvas");
  const minGapMs = 1000 / KVSNB_FALLBACK_FPS;
  let busy = false;
  let last = -Infinity;
  const send = (source, width, height, captured) => {
    busy = true;
    last = performance.now();
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").drawImage(source, 0, 0);
    canvas.toBlob(async (blob) => {
      busy = false;
      if (blob) sendBytes(kvsnbPackChunk(KVSNB_CHUNK.JPEG, true, captured, await blob.arrayBuffer()));
    }, "image/jpeg", KVSNB_JPEG_QUALITY);
  };
  if (typeof MediaStreamTrackProcessor !== "undefined") {
    const toEpoch = kvsnbClock();
    const reading = kvsnbReadTrack(track, (frame) => {
      if (!busy && performance.now() - last >= minGapMs * 0.9) {
        send(frame, frame.displayWidth, frame.displayHeight, toEpoch(frame.timestamp));
      }
      frame.close();
    }, log);
    return { stop: () => reading.stop(), requestKeyframe: () => {} };
  }
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.srcObject = new MediaStream([track]);
  video.play().catch((e) => log(`camera preview: ${e}`));
  let seen = -1;
  const timer = setInterval(() => {
    const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    const count = quality ? quality.totalVideoFrames : -2;
    if (busy || !video.videoWidth || count === seen) return;
    seen = count;
    send(video, video.videoWidth, video.videoHeight, kvsnbNowUs());
  }, minGapMs);
  return { stop: () => { clearInterval(timer); video.srcObject = null; }, requestKeyframe: () => {} };
}

// The microphone as Opus packets (WebCodecs), through an AudioContext at 48 kHz; the encoder
// is configured from the first AudioData (its rate and channels). Returns {stop}.
function kvsnbEncodeOpus(track, config, sendBytes, log) {
  const context = new AudioContext({ sampleRate: 48000 });
  const source = context.createMediaStreamSource(new MediaStream([track]));
  const sink = context.createMediaStreamDestination();
  source.connect(sink);
  const toEpoch = kvsnbClock();
  let encoder = null;
  const reading = kvsnbReadTrack(sink.stream.getAudioTracks()[0], (data) => {
    if (encoder === null) {
      encoder = new AudioEncoder({
        output: (chunk) => {
          const bytes = new Uint8Array(chunk.byteLength);
          chunk.copyTo(bytes);
          sendBytes(kvsnbPackChunk(KVSNB_CHUNK.OPUS, false, toEpoch(chunk.timestamp), bytes));
        },
        error: (e) => log(`Opus encoder: ${e}`),
      });
      encoder.configure({ ...config, sampleRate: data.sampleRate, numberOfChannels: data.numberOfChannels });
    }
    if (encoder.state === "configured") encoder.encode(data);
    data.close();
  }, log);
  return {
    stop: () => {
      reading.stop();
      if (encoder && encoder.state !== "closed") encoder.close();
      context.close();
    },
  };
}

// The microphone as PCM s16le mono 48 kHz (no Opus encoder in this browser). Returns {stop}.
function kvsnbEncodePcm(track, sendBytes, log) {
  const context = new AudioContext({ sampleRate: 48000 });
  const source = context.createMediaStreamSource(new MediaStream([track]));
  const node = context.createScriptProcessor(1024, 1, 1);
  node.onaudioprocess = (event) => {
    const input = event.inputBuffer.getChannelData(0);
    const pcm = new Int16Array(input.length);
    for (let i = 0; i < input.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(input[i] * 32767)));
    const first = kvsnbNowUs() - Math.round((input.length / 48000) * 1e6);
    sendBytes(kvsnbPackChunk(KVSNB_CHUNK.PCM, false, first, new Uint8Array(pcm.buffer)));
  };
  source.connect(node);
  node.connect(context.destination);
  return { stop: () => { node.disconnect(); source.disconnect(); context.close(); } };
}

async function kvsnbStartAudio(track, sendBytes, log) {
  if (!track) return { format: null, handle: { stop: () => {} } };
  const opus = await kvsnbOpusConfig();
  if (opus && typeof MediaStreamTrackProcessor !== "undefined") {
    return { format: "opus", handle: kvsnbEncodeOpus(track, opus, sendBytes, log) };
  }
  log("this browser has no Opus encoder (WebCodecs): the kernel encodes the microphone");
  return { format: "pcm", handle: kvsnbEncodePcm(track, sendBytes, log) };
}

// MASTER: sends the camera (and microphone) of `stream` to the kernel.
async function kvsnbKernelMaster(stream, sendBytes, log, onBytes) {
  const video = stream.getVideoTracks()[0];
  if (!video) throw new Error("the page has no camera track to send");
  const settings = video.getSettings();
  const width = settings.width || 640, height = settings.height || 480;
  const h264 = await kvsnbH264Config(width, height);
  let videoHandle, videoFormat;
  if (h264 && typeof MediaStreamTrackProcessor !== "undefined") {
    videoFormat = "h264";
    videoHandle = kvsnbEncodeH264(video, h264, sendBytes, log);
  } else {
    videoFormat = "jpeg";
    log("this browser has no H.264 encoder (WebCodecs): it sends pictures, the kernel encodes them");
    videoHandle = kvsnbEncodeJpeg(video, sendBytes, log);
  }
  const audio = await kvsnbStartAudio(stream.getAudioTracks()[0], sendBytes, log);
  const info = { video: videoFormat, audio: audio.format, width, height, codec: h264 ? h264.codec : null };
  kvsnbSendInfo(sendBytes, info);
  log(`kernel path: video ${videoFormat}, audio ${audio.format || "none"}, ${width}x${height}`);
  if (onBytes) {
    onBytes((data) => {
      const chunk = kvsnbParseChunk(data);
      if (chunk && chunk.kind === KVSNB_CHUNK.KEYFRAME_REQUEST) videoHandle.requestKeyframe();
    });
  }
  return {
    info,
    stop: () => { videoHandle.stop(); audio.handle.stop(); },
  };
}

// VIEWER: draws the kernel's JPEG pictures of the master's video on `canvas` (the newest
// only) and sends the microphone of `micStream` to the kernel.
async function kvsnbKernelViewer(canvas, onBytes, micStream, sendBytes, log) {
  let pending = null;
  let drawing = false;
  let stopped = false;
  const stats = { pictures: 0, drawn: 0, lastCaptureUs: null };
  const draw = async () => {
    if (drawing || !pending || stopped) return;
    drawing = true;
    const chunk = pending;
    pending = null;
    try {
      const bitmap = await createImageBitmap(new Blob([chunk.payload], { type: "image/jpeg" }));
      if (canvas.width !== bitmap.width) canvas.width = bitmap.width;
      if (canvas.height !== bitmap.height) canvas.height = bitmap.height;
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      bitmap.close();
      stats.drawn += 1;
      stats.lastCaptureUs = chunk.timestampUs;
    } catch (e) {
      log(`picture: ${e}`);
    }
    drawing = false;
    if (pending) draw();
  };
  onBytes((data) => {
    const chunk = kvsnbParseChunk(data);
    if (!chunk || chunk.kind !== KVSNB_CHUNK.JPEG) return;
    stats.pictures += 1;
    pending = chunk;
    draw();
  });
  const track = micStream ? micStream.getAudioTracks()[0] : null;
  const audio = await kvsnbStartAudio(track, sendBytes, log);
  const info = { video: null, audio: audio.format };
  kvsnbSendInfo(sendBytes, info);
  log(`kernel path: the master's video drawn from the kernel, microphone ${audio.format || "none"}`);
  return { info, stats, stop: () => { stopped = true; audio.handle.stop(); } };
}
