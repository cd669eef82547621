// The front end of kvsnb.widgets.Player (an anywidget ES module); see player.py.
async function importSource(source) {
  const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  try { return await import(url); } finally { URL.revokeObjectURL(url); }
}

function iso(ms) { return new Date(ms).toISOString(); }

// DASH: the S elements of the video timeline with their kvs:ts (see kvsnb.local.archive.dash)
async function dashTimeline(url) {
  const text = await (await fetch(url)).text();
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

// The player library comes from the kernel in a message (see player.py).
function requestLibrary(model) {
  return new Promise((resolve) => {
    const onMessage = (msg) => {
      if (msg && msg.type === "library") {
        model.off("msg:custom", onMessage);
        resolve(msg.source);
      }
    };
    model.on("msg:custom", onMessage);
    model.send({ type: "need-library" });
  });
}

async function render({ model, el }) {
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
  const url = model.get("url");
  const live = model.get("live");
  const sync = model.get("live_sync_segments");
  let player = null;
  let onScreen = () => null;
  let mediaTime = 0;
  let frameAt = -Infinity;
  let timer = null;
  const fail = (message) => {
    model.set("error", String(message)); model.save_changes();
    stamp.textContent = "error: " + message;
  };
  try {
    const lib = await importSource(await requestLibrary(model));
    if (protocol === "HLS") {
      const Hls = lib.default;
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
      player = hls;
      // the fragment holding the frame shown (its media start as parsed, startPTS, once
      // loaded) and its PROGRAM-DATE-TIME; hls.playingDate lags at fragment changes. A LIVE
      // playlist slides on while the video is paused: the fragments seen are remembered
      // (the last KNOWN_FRAGMENTS), so a paused frame keeps its time.
      const known = new Map();  // fragment sn → [start, end, program date time]
      onScreen = () => {
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
    } else {
      const dash = lib.MediaPlayer().create();
      const target = model.get("target_duration_s");
      const settings = { streaming: { } };
      if (live) {
        settings.streaming.delay = { liveDelay: (sync + 1) * target };
        settings.streaming.liveCatchup = { enabled: true, maxDrift: 2 * target,
                                           playbackRate: { min: -0.3, max: 0.5 } };
      }
      dash.updateSettings(settings);
      dash.on("error", (e) => fail(e.error ? (e.error.message || e.error.code) : "error"));
      dash.initialize(video, url, true);
      player = dash;
      let timeline = await dashTimeline(url);
      if (timeline && timeline.dynamic) {
        const refresh = setInterval(async () => {
          try { timeline = await dashTimeline(url); } catch (err) { /* next time */ }
        }, 1000);
        model.on("destroy", () => clearInterval(refresh));
      }
      onScreen = () => dashStamp(timeline, mediaTime);
    }
  } catch (err) {
    fail(err && err.message ? err.message : String(err));
    return;
  }

  if (video.requestVideoFrameCallback) {
    const onFrame = (now, meta) => {
      mediaTime = meta.mediaTime;
      frameAt = now;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
  // LIVE hls.js: (re)starting playback goes back near the live edge (a muted video that
  // was paused, or held by the browser while scrolled out of view, would be far behind);
  // dash.js's live catch-up does this by itself
  if (live && protocol === "HLS") {
    const target = model.get("target_duration_s");
    video.addEventListener("play", () => {
      const edge = player.liveSyncPosition;
      if (Number.isFinite(edge) && video.currentTime < edge - 2 * target) video.currentTime = edge;
    });
  }
  video.kvsnbPlayer = player;  // for tests and the browser console
  video.kvsnbMediaTime = () => mediaTime;
  const report = () => {
    // the frame shown: the last one presented (requestVideoFrameCallback) while playing;
    // currentTime's when paused, or when no frame was presented lately (a hidden video
    // presents none, so the last one seen would be stale)
    if (video.paused || performance.now() - frameAt > STALE_FRAME_MS) mediaTime = video.currentTime;
    const ms = onScreen();
    stamp.textContent = ms === null ? "—" : iso(Math.round(ms));
    const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    model.set("current_time", video.currentTime);
    model.set("paused", video.paused);
    model.set("on_screen_ms", ms === null ? -1 : Math.round(ms));
    model.set("decoded_frames", quality ? quality.totalVideoFrames : 0);
    model.save_changes();
  };
  timer = setInterval(report, model.get("report_ms"));
  model.on("msg:custom", (msg) => {
    if (msg.type === "seek") video.currentTime = msg.time;
    else if (msg.type === "pause") video.pause();
    else if (msg.type === "play") video.play();
  });
  return () => {
    clearInterval(timer);
    try {
      if (player && player.destroy) player.destroy();
      else if (player && player.reset) player.reset();
    } catch (err) { /* closing */ }
  };
}

export default { render };
