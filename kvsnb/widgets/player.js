// The front end of kvsnb.widgets.Player (an anywidget ES module); see player.py.
//
// Lifetimes: the player library (hls.js or dash.js, sent by the kernel) is requested and
// imported once per model, in initialize; each view owns its player, timers and listeners,
// and the cleanup render returns (anywidget calls it when the view goes) releases them all.
async function importSource(source) {
  const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  try { return await import(url); } finally { URL.revokeObjectURL(url); }
}

function iso(ms) { return new Date(ms).toISOString(); }

// DASH: the S elements of the video timeline with their kvs:ts (see kvsnb.local.archive.dash)
async function dashTimeline(url, signal) {
  const text = await (await fetch(url, { signal })).text();
  const doc = new DOMParser().parseFromString(text, "application/xml");
  const sets = Array.from(doc.getElementsByTagName("AdaptationSet"));
  const video = sets.find((a) => a.getAttribute("contentType") === "video") || sets[0];
  if (!video) return null;
  const tpl = video.getElementsByTagName("SegmentTemplate")[0];
  const scale = Number(tpl.getAttribute("timescale") || 1);
  const pto = Number(tpl.getAttribute("presentationTimeOffset") || 0);
  const rows = [];
  let t = 0;
  for (const s of Array.from(tpl.getElementsByTagName("S"))) {
    t = s.hasAttribute("t") ? Number(s.getAttribute("t")) : t;
    const d = Number(s.getAttribute("d"));
    const ts = s.getAttribute("kvs:ts");
    rows.push({ t, d, ts: ts === null ? null : Number(ts) });
    t += d;
  }
  return { scale, pto, rows, dynamic: doc.documentElement.getAttribute("type") === "dynamic" };
}

function dashStamp(timeline, mediaTime) {
  if (!timeline) return null;
  const m = mediaTime * timeline.scale + timeline.pto;
  for (const r of timeline.rows) {
    if (r.ts !== null && m >= r.t && m < r.t + r.d) return r.ts + (m - r.t) * 1000 / timeline.scale;
  }
  return null;
}

const STALE_FRAME_MS = 250;
const KNOWN_FRAGMENTS = 600;  // remembered fragment times of a LIVE HLS playlist (10 min of 1 s)
const DASH_REFRESH_MS = 1000;  // a dynamic MPD's kvs:ts are re-read this often

// The player library comes from the kernel in a message (see player.py); the listener goes
// when the answer comes or when `signal` aborts (the model's module is replaced).
function requestLibrary(model, signal) {
  return new Promise((resolve, reject) => {
    const onMessage = (msg) => {
      if (msg && msg.type === "library") {
        model.off("msg:custom", onMessage);
        resolve(msg.source);
      }
    };
    model.on("msg:custom", onMessage);
    if (signal) {  // the AbortSignal anywidget passes initialize (recent versions)
      signal.addEventListener("abort", () => {
        model.off("msg:custom", onMessage);
        reject(new Error("the player module was replaced"));
      });
    }
    model.send({ type: "need-library" });
  });
}

// Each setup attaches a player to `video` and returns {player, onScreen, dispose}:
// onScreen(mediaTime) is the program date time (epoch ms) of the frame at mediaTime, or null;
// dispose() removes everything the setup added (listeners, timers, the player itself).

// hls.js: the fragment holding the frame shown (its media start as parsed, startPTS, once
// loaded) and its PROGRAM-DATE-TIME; hls.playingDate lags at fragment changes. A LIVE
// playlist slides on while the video is paused: the fragments seen are remembered (the
// last KNOWN_FRAGMENTS), so a paused frame keeps its time.
function setupHls(Hls, video, { url, live, sync, target, fail }) {
  const config = live
    ? { liveSyncDurationCount: sync, liveMaxLatencyDurationCount: sync + 2,
        maxLiveSyncPlaybackRate: 1.5, backBufferLength: 30, enableWorker: false }
    : { enableWorker: false };
  const hls = new Hls(config);
  hls.on(Hls.Events.ERROR, (_e, data) => {
    if (data.fatal) fail(`${data.type}: ${data.details}`);
  });
  hls.loadSource(url);
  hls.attachMedia(video);
  const known = new Map();  // fragment sn → [start, end, program date time]
  const onScreen = (mediaTime) => {
    const level = hls.levels && hls.levels[hls.currentLevel >= 0 ? hls.currentLevel : 0];
    const frags = level && level.details ? level.details.fragments : [];
    for (const f of frags) {
      if (f.programDateTime === null) continue;
      const start = Number.isFinite(f.startPTS) ? f.startPTS : f.start;
      const end = Number.isFinite(f.endPTS) ? f.endPTS : f.start + f.duration;
      known.set(f.sn, [start, end, f.programDateTime]);
    }
    while (known.size > KNOWN_FRAGMENTS) known.delete(known.keys().next().value);
    for (const [start, end, pdt] of known.values()) {
      if (mediaTime >= start && mediaTime < end) return pdt + (mediaTime - start) * 1000;
    }
    return null;
  };
  // LIVE: (re)starting playback goes back near the live edge (a muted video that was
  // paused, or held by the browser while scrolled out of view, would be far behind);
  // dash.js's live catch-up does this by itself
  const onPlay = () => {
    const edge = hls.liveSyncPosition;
    if (Number.isFinite(edge) && video.currentTime < edge - 2 * target) video.currentTime = edge;
  };
  if (live) video.addEventListener("play", onPlay);
  const dispose = () => {
    video.removeEventListener("play", onPlay);
    hls.destroy();
  };
  return { player: hls, onScreen, dispose };
}

// dash.js: the frame's time from the MPD's kvs:ts (re-read every DASH_REFRESH_MS while the
// MPD is dynamic, as dash.js does not keep them).
async function setupDash(dashjs, video, { url, live, sync, target, fail }) {
  const dash = dashjs.MediaPlayer().create();
  const settings = { streaming: { } };
  if (live) {
    settings.streaming.delay = { liveDelay: (sync + 1) * target };
    settings.streaming.liveCatchup = { enabled: true, maxDrift: 2 * target,
                                       playbackRate: { min: -0.3, max: 0.5 } };
  }
  dash.updateSettings(settings);
  dash.on("error", (e) => fail(e.error ? (e.error.message || e.error.code) : "error"));
  dash.initialize(video, url, true);
  const aborter = new AbortController();  // the MPD fetches in flight
  let refresh = null;
  const dispose = () => {
    aborter.abort();
    clearInterval(refresh);
    if (dash.destroy) dash.destroy(); else dash.reset();
  };
  let timeline;
  try {
    timeline = await dashTimeline(url, aborter.signal);
  } catch (err) {
    dispose();
    throw err;
  }
  if (timeline && timeline.dynamic) {
    let fetching = false;
    refresh = setInterval(async () => {
      if (fetching) return;
      fetching = true;
      try { timeline = await dashTimeline(url, aborter.signal); } catch (err) { /* next time */ }
      fetching = false;
    }, DASH_REFRESH_MS);
  }
  return { player: dash, onScreen: (mediaTime) => dashStamp(timeline, mediaTime), dispose };
}

// The browser's own HLS (Safari, where hls.js has no Media Source Extensions): the frame's
// time from the program date time the browser gives the stream's start (getStartDate).
function setupNative(video, { url }) {
  video.src = url;
  const onScreen = (mediaTime) => {
    const start = video.getStartDate ? video.getStartDate().getTime() : NaN;
    return Number.isFinite(start) ? start + mediaTime * 1000 : null;
  };
  const dispose = () => {
    video.removeAttribute("src");
    video.load();
  };
  return { player: null, onScreen, dispose };
}

async function setup(lib, video, protocol, options) {
  if (protocol === "DASH") return setupDash(lib, video, options);
  const Hls = lib.default;
  if (Hls.isSupported()) return setupHls(Hls, video, options);
  if (video.canPlayType("application/vnd.apple.mpegurl")) return setupNative(video, options);
  throw new Error("this browser plays HLS neither with hls.js nor by itself");
}

function widget() {
  let library = null;  // the model's player library module (a promise), from initialize

  function initialize({ model, signal }) {
    library = requestLibrary(model, signal).then(importSource);
    library.catch(() => { /* reported by the views that wait for it */ });
  }

  function render({ model, el }) {
    const box = document.createElement("div");
    box.className = "kvsnb-player";
    box.style.cssText = "display:inline-flex;flex-direction:column;gap:4px;font:13px monospace";
    const video = document.createElement("video");
    video.muted = true; video.autoplay = true; video.playsInline = true; video.controls = true;
    video.style.cssText = `width:${model.get("width")}px;background:#000`;
    const stamp = document.createElement("div");
    stamp.className = "kvsnb-player-pdt";
    stamp.textContent = "—";
    box.append(video, stamp);
    el.append(box);

    const protocol = model.get("protocol");
    let closed = false;
    let attached = null;  // {player, onScreen, dispose} once set up
    let timer = null;
    let frameRequest = null;
    let mediaTime = 0;
    let frameAt = -Infinity;
    const fail = (message) => {
      if (closed) return;
      model.set("error", String(message)); model.save_changes();
      stamp.textContent = "error: " + message;
    };
    const onCommand = (msg) => {
      if (!msg) return;
      if (msg.type === "seek") video.currentTime = msg.time;
      else if (msg.type === "pause") video.pause();
      else if (msg.type === "play") video.play();
    };
    const onFrame = (now, meta) => {
      mediaTime = meta.mediaTime;
      frameAt = now;
      frameRequest = video.requestVideoFrameCallback(onFrame);
    };
    const report = () => {
      // the frame shown: the last one presented (requestVideoFrameCallback) while playing;
      // currentTime's when paused, or when no frame was presented lately (a hidden video
      // presents none, so the last one seen would be stale)
      if (video.paused || performance.now() - frameAt > STALE_FRAME_MS) mediaTime = video.currentTime;
      const ms = attached.onScreen(mediaTime);
      stamp.textContent = ms === null ? "—" : iso(Math.round(ms));
      const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
      model.set("current_time", video.currentTime);
      model.set("paused", video.paused);
      model.set("on_screen_ms", ms === null ? -1 : Math.round(ms));
      model.set("decoded_frames", quality ? quality.totalVideoFrames : 0);
      model.save_changes();
    };
    const dispose = () => {
      if (closed) return;
      closed = true;
      model.off("msg:custom", onCommand);
      clearInterval(timer);
      if (frameRequest !== null) video.cancelVideoFrameCallback(frameRequest);
      try { if (attached) attached.dispose(); } catch (err) { /* closing */ }
      attached = null;
    };

    const start = async () => {
      const options = {
        url: model.get("url"),
        live: model.get("live"),
        sync: model.get("live_sync_segments"),
        target: model.get("target_duration_s"),
        fail,
      };
      const made = await setup(await library, video, protocol, options);
      if (closed) { made.dispose(); return; }  // the view went while it was set up
      attached = made;
      if (video.requestVideoFrameCallback) frameRequest = video.requestVideoFrameCallback(onFrame);
      video.kvsnbPlayer = made.player;  // for tests and the browser console
      video.kvsnbMediaTime = () => mediaTime;
      timer = setInterval(report, model.get("report_ms"));
      model.on("msg:custom", onCommand);
    };
    start().catch((err) => fail(err && err.message ? err.message : String(err)));
    return dispose;
  }

  return { initialize, render };
}

// anywidget calls a default export that is a function once per model (it loads the module
// for each model), so `library` above belongs to one model.
export default widget;
