// The front end of kvsnb.widgets.Player (an anywidget ES module); see player.py.
//
// Lifetimes: the player library (hls.js or dash.js, sent by the kernel) is requested and
// imported, and the kernel bridge opened, once per model, in initialize (the bridge closes
// with the model); each view owns its player, timers and listeners,
// and the cleanup render returns (anywidget calls it when the view goes) releases them all.
//
// Reports go to the kernel over the kernel bridge's socket (kvsnbOpenBridge, bridge.js, which
// the Python side puts in front of this module), so the kernel hears them while a cell runs;
// until the socket is open, or if it cannot be or closes, they go as trait changes (comm
// messages, which the kernel reads between cells).
async function importSource(source) {
  const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  try { return await import(url); } finally { URL.revokeObjectURL(url); }
}

function iso(ms) { return new Date(ms).toISOString(); }

// DASH: the S elements of the video timeline with their kvs:ts (see kvsnb.local.archive.dash)
// A read of the MPD adds its clock sample to `clock` (see serverClock).
async function dashTimeline(url, signal, clock) {
  const sent = Date.now();
  const text = await (await fetch(url, { signal })).text();
  const received = Date.now();
  const doc = new DOMParser().parseFromString(text, "application/xml");
  const direct = Array.from(doc.getElementsByTagName("UTCTiming"))
    .find((u) => UTC_DIRECT.includes(u.getAttribute("schemeIdUri")));
  const server = direct ? Date.parse(direct.getAttribute("value")) : NaN;
  // the server's clock less the page's, from this read (exact to half its round trip)
  if (Number.isFinite(server)) clock.add({ offset: server - (sent + received) / 2, rtt: received - sent });
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

// A LIVE MPD's UTCTiming "direct" value is the server's time when it wrote the MPD. dash.js
// reads it to the second only: its MPD parser turns every attribute that looks like a date
// into a Date, and its clock synchronisation reads that Date back as text, which drops the
// milliseconds (dash.js 5.2.1: its DateTimeMatcher and getUTCTimingSources). So it took the
// server's clock to run 0-1 s behind its own, believed the media that much younger than it was
// and played that much further behind than its live delay (0.9 s in one run). The Player keeps
// its own estimate of the server's clock from the MPDs it reads itself (of the last
// CLOCK_SAMPLES, the one with the shortest round trip), and each MPD dash.js receives names,
// in place of a direct value, an ISO time source (urn:mpeg:dash:utc:http-iso:2014, which
// dash.js reads to the millisecond) holding the server's time at that moment by that
// estimate. dash.js synchronises on it every CLOCK_SYNC_S while the MPD is dynamic (by
// default after 30 s, then less often)
const UTC_DIRECT = ["urn:mpeg:dash:utc:direct:2014", "urn:mpeg:dash:utc:direct:2012"];
const UTC_HTTP_ISO = "urn:mpeg:dash:utc:http-iso:2014";
const CLOCK_SAMPLES = 20;
const CLOCK_SYNC_S = 4;

function serverClock() {
  const samples = [];
  return {
    add(sample) {
      samples.push(sample);
      if (samples.length > CLOCK_SAMPLES) samples.shift();
    },
    offset() {
      let best = null;
      for (const s of samples) if (best === null || s.rtt < best.rtt) best = s;
      return best === null ? null : best.offset;
    },
  };
}

// The MPD with each direct UTCTiming replaced by an ISO time source holding the server's
// time now, by the clock's estimate (see UTC_DIRECT).
function restampMpd(text, offset) {
  const now = new Date(Date.now() + offset).toISOString();
  return text.replace(/<UTCTiming\b[^>]*?(?:\/>|>[^<]*<\/UTCTiming>)/g, (tag) => {
    const scheme = /schemeIdUri="([^"]*)"/.exec(tag);
    if (!scheme || !UTC_DIRECT.includes(scheme[1])) return tag;
    return `<UTCTiming schemeIdUri="${UTC_HTTP_ISO}" value="data:text/plain,${now}"/>`;
  });
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
const HOLE_SLACK_MS = 5;  // see setupHls: a fragment's offset this far off the median is moved
const KNOWN_FRAGMENTS = 600;  // remembered fragment times of a LIVE HLS playlist (10 min of 1 s)
const DASH_REFRESH_MS = 1000;  // a dynamic MPD is re-read at least this often
// LIVE DASH: the MPD is re-read DASH_EARLY_MS before the next segment should be listed, then
// every DASH_POLL_MS until it is; dash.js is told to re-read it too when a new segment is
// listed, at most every DASH_TELL_MS. Within AWS's 5 manifest calls a second per session:
// at most 1000 / DASH_POLL_MS here and 1000 / DASH_TELL_MS by dash.js
const DASH_EARLY_MS = 150;
const DASH_POLL_MS = 300;
const DASH_TELL_MS = 600;
// LIVE DASH: dash.js tries for the next segment every DASH_SCHEDULE_MS while none is
// available (its default, 500 ms, came on top of the wait for the listing)
const DASH_SCHEDULE_MS = 100;
const DELAY_SLACK_S = 0.01;  // a dash.js live delay this far under the Player's is capped
// LIVE: the stream counts as stopped when no new fragment was listed for this many target
// durations (at least STOPPED_MIN_MS) while the video waits at the end of what it has
const STOPPED_TARGETS = 5;
const STOPPED_MIN_MS = 5000;

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

// Each setup attaches a player to `video` and returns {player, onScreen, newest, dispose}:
// onScreen(mediaTime) is the program date time (epoch ms) of the frame at mediaTime, or null;
// newest() the end (epoch ms) of the newest fragment listed, or null; dispose() removes
// everything the setup added (listeners, timers, the player itself).

// hls.js: the fragment holding the frame shown (its video track's media start as parsed, once
// loaded) and its PROGRAM-DATE-TIME; hls.playingDate lags at fragment changes. A LIVE
// playlist slides on while the video is paused: the fragments seen are remembered (the
// last KNOWN_FRAGMENTS), so a paused frame keeps its time.
function setupHls(Hls, video, { url, live, sync, delay, target, fail }) {
  const behind = delay > 0
    ? { liveSyncDuration: delay, liveMaxLatencyDuration: delay + 2 * target }
    : { liveSyncDurationCount: sync, liveMaxLatencyDurationCount: sync + 2 };
  const config = live
    ? { ...behind, maxLiveSyncPlaybackRate: 1.5, backBufferLength: 30, enableWorker: false }
    : { enableWorker: false };
  const hls = new Hls(config);
  hls.on(Hls.Events.ERROR, (_e, data) => {
    if (data.fatal) fail(`${data.type}: ${data.details}`);
  });
  hls.loadSource(url);
  hls.attachMedia(video);
  const known = new Map();  // fragment sn → [start, end, program date time, cc, parsed, remuxed]
  // hls.js remuxes MPEG-TS (fragments with no EXT-X-MAP) and closes a hole before a
  // fragment (a frame missing at the boundary) by moving that fragment's first frame back by
  // the hole; its other frames keep their times. That fragment's parsed start is early by the
  // hole, so every time mapped from it would be late by as much (seen: 1-2 frame intervals).
  // Within a discontinuity range the media runs on one clock, so the offset (program date
  // time - media time) is the same for every fragment: a fragment whose own offset is larger
  // than the range's median by more than HOLE_SLACK_MS is mapped with the median, and its
  // moved first frame with the fragment's program date time.
  const offsetFor = (cc, own, remuxed) => {
    if (!remuxed) return own;  // fMP4 plays as stored: hls.js moves no frame
    const offsets = [];
    for (const [s, , p, c, parsed] of known.values()) {
      if (parsed && c === cc) offsets.push(p - s * 1000);
    }
    if (offsets.length < 3) return own;
    offsets.sort((a, b) => a - b);
    const median = offsets[Math.floor((offsets.length - 1) / 2)];
    return own - median > HOLE_SLACK_MS ? median : own;
  };
  const onScreen = (mediaTime) => {
    const level = hls.levels && hls.levels[hls.currentLevel >= 0 ? hls.currentLevel : 0];
    const frags = level && level.details ? level.details.fragments : [];
    for (const f of frags) {
      if (f.programDateTime === null) continue;
      // the video track's own times once the fragment is parsed: the fragment's startPTS is
      // the earliest of its tracks (audio may start before the first frame)
      const v = f.elementaryStreams && (f.elementaryStreams.video || f.elementaryStreams.audiovideo);
      const parsed = v && Number.isFinite(v.startPTS) ? v
        : Number.isFinite(f.startPTS) ? f : null;
      const start = parsed ? parsed.startPTS : f.start;
      const end = parsed ? parsed.endPTS : f.start + f.duration;
      known.set(f.sn, [start, end, f.programDateTime, f.cc, parsed !== null, !f.initSegment]);
    }
    while (known.size > KNOWN_FRAGMENTS) known.delete(known.keys().next().value);
    for (const [start, end, pdt, cc, , remuxed] of known.values()) {
      if (mediaTime >= start && mediaTime < end) {
        const ms = mediaTime * 1000 + offsetFor(cc, pdt - start * 1000, remuxed);
        return Math.max(ms, pdt);  // the moved first frame is the fragment's first
      }
    }
    return null;
  };
  const newest = () => {
    let last = null;
    for (const [start, end, pdt] of known.values()) {
      const ms = pdt + (end - start) * 1000;
      if (last === null || ms > last) last = ms;
    }
    return last;
  };
  // LIVE: (re)starting playback goes back near the live edge (a muted video that was
  // paused, or held by the browser while scrolled out of view, would be far behind);
  // dash.js's live catch-up does this by itself
  // While paused, hls.js must not move the video: at each playlist reload it resets a video
  // further than its max latency behind the edge to the live sync position, paused or not, so
  // a paused LIVE frame jumped seconds ahead under the viewer's eyes (and its time with it).
  // Its config is read at each reload: the max latency is lifted while paused
  const maxLatency = delay > 0 ? "liveMaxLatencyDuration" : "liveMaxLatencyDurationCount";
  const keptMaxLatency = hls.config[maxLatency];
  const onPause = () => { hls.config[maxLatency] = Infinity; };
  const onPlay = () => {
    hls.config[maxLatency] = keptMaxLatency;
    const edge = hls.liveSyncPosition;
    if (Number.isFinite(edge) && video.currentTime < edge - 2 * target) video.currentTime = edge;
  };
  if (live) {
    video.addEventListener("play", onPlay);
    video.addEventListener("pause", onPause);
  }
  const dispose = () => {
    video.removeEventListener("play", onPlay);
    video.removeEventListener("pause", onPause);
    hls.destroy();
  };
  return { player: hls, onScreen, newest, dispose };
}

// LIVE DASH plays this many target durations more than `sync` behind the live edge (the
// server's clock): a segment reaches dash.js ~0.1-0.35 s after it ends (stored, listed, read
// with the MPD, fetched), so at 1 s fragments a playhead 1.5 s behind never ran dry on a quiet
// machine; 1.7 s leaves room for a busy one
const DASH_DELAY_MARGIN_TARGETS = 0.7;
// dash.js seeks back to its delay once it is more than the delay and this many target
// durations behind it (liveCatchup.maxDrift, a deviation from the delay)
const LIVE_CATCHUP_TARGETS = 2;

// dash.js: the frame's time from the MPD's kvs:ts (re-read while the MPD is dynamic, as
// dash.js does not keep them).
async function setupDash(dashjs, video, { url, live, sync, delay, target, fail }) {
  const dash = dashjs.MediaPlayer().create();
  const settings = { streaming: { } };
  const liveDelay = delay > 0 ? delay : (sync + DASH_DELAY_MARGIN_TARGETS) * target;
  if (live) {
    // `delay` > 0 (live_delay_s) replaces the default. The session lists more fragments than
    // AWS's default 5 (Player.from_stream: LIVE_WINDOW_FRAGMENTS), so a playhead that falls
    // behind on a busy machine is still in the MPD (at 5, dash.js then waited for ever). A
    // gentle catch-up (±10 %) brings it back to the delay
    settings.streaming.delay = { liveDelay };
    settings.streaming.scheduling = { defaultTimeout: DASH_SCHEDULE_MS };
    settings.streaming.liveCatchup = { enabled: true, maxDrift: liveDelay + LIVE_CATCHUP_TARGETS * target,
                                       playbackRate: { min: -0.1, max: 0.1 } };
    settings.streaming.utcSynchronization = {
      timeBetweenSyncAttempts: CLOCK_SYNC_S,
      minimumTimeBetweenSyncAttempts: CLOCK_SYNC_S,
      maximumTimeBetweenSyncAttempts: CLOCK_SYNC_S,
      // a segment request that fails would have dash.js synchronise again on the source it
      // used last, whose time has aged since
      enableBackgroundSyncAfterSegmentDownloadError: false,
    };
  }
  dash.updateSettings(settings);
  dash.on("error", (e) => fail(e.error ? (e.error.message || e.error.code) : "error"));
  const aborter = new AbortController();  // the MPD fetches in flight
  const clock = serverClock();
  // the Player's own first read, started with dash.js's: the MPD dash.js receives first is
  // restamped once that read has given the clock its first sample (see UTC_DIRECT)
  const firstRead = dashTimeline(url, aborter.signal, clock);
  dash.addResponseInterceptor(async (response) => {
    if (typeof response.data !== "string" || !response.data.includes("<UTCTiming")) return response;
    try { await firstRead; } catch (err) { /* no sample from it */ }
    const offset = clock.offset();
    if (offset !== null) response.data = restampMpd(response.data, offset);
    return response;
  });
  dash.initialize(video, url, true);
  let refresh = null;
  const dispose = () => {
    aborter.abort();
    clearTimeout(refresh);
    if (dash.destroy) dash.destroy(); else dash.reset();
  };
  // a LIVE MPD lists a sliding window: the segments seen are remembered (the last
  // KNOWN_FRAGMENTS), so a frame behind the window keeps its time. Keyed by kvs:ts (the
  // fragment's own time): the t of a listed segment may move when a gap before it is
  // closed, and the newest MPD's t wins
  const known = new Map();
  let timeline = null;  // {scale, pto, rows} of every segment seen
  const merge = (read) => {
    if (!read) return;
    for (const r of read.rows) known.set(r.ts !== null ? `ts${r.ts}` : `t${r.t}`, r);
    while (known.size > KNOWN_FRAGMENTS) known.delete(known.keys().next().value);
    timeline = { scale: read.scale, pto: read.pto, rows: Array.from(known.values()) };
  };
  let first;
  try {
    first = await firstRead;
  } catch (err) {
    dispose();
    throw err;
  }
  merge(first);
  if (first && first.dynamic) {
    // A LIVE segment is listed once stored, just after it ends, and dash.js re-reads the MPD
    // every minimumUpdatePeriod (1 s): alone it learnt of a segment up to 1 s after it was
    // listed, and a playhead closer to the edge than that ran out of media. Here the MPD is
    // re-read when the next segment is due (one segment duration after the newest was first
    // seen, a little early, then every DASH_POLL_MS until it comes), and dash.js is told to
    // re-read it as soon as one comes, so it learns of each within ~DASH_POLL_MS.
    //
    // dash.js caps its live delay at the MPD's timeShiftBufferDepth when the stream starts,
    // and an MPD read just after the stream's first fragment spans 1-2 s: dash.js then aimed
    // closer to the edge than a segment can be there, ran dry and stalled again and again.
    // Once the listed segments span the delay it is set again, and dash.js works it out anew
    // from the MPD of the moment
    const keepDelay = (read) => {
      if (!read || !read.rows.length) return;
      const last = read.rows[read.rows.length - 1];
      const span = (last.t + last.d - read.rows[0].t) / read.scale;
      try {
        if (span >= liveDelay && dash.getTargetLiveDelay() < liveDelay - DELAY_SLACK_S) {
          dash.updateSettings({ streaming: { delay: { liveDelay } } });
        }
      } catch (err) { /* not playing yet */ }
    };
    let seenAt = performance.now();  // when the newest segment was first seen
    let told = -Infinity;
    const poll = async () => {
      let wait = DASH_REFRESH_MS;
      try {
        const before = newestRow();
        const read = await dashTimeline(url, aborter.signal, clock);
        merge(read);
        if (read && !read.dynamic) return;  // LIVE_REPLAY played out: the MPD is final
        keepDelay(read);
        const row = newestRow();
        const now = performance.now();
        const duration = row ? row.d * 1000 / timeline.scale : DASH_REFRESH_MS;
        if (row && (!before || order(row) > order(before))) {
          seenAt = now;
          if (now - told >= DASH_TELL_MS) {
            told = now;
            try { dash.refreshManifest(() => {}); } catch (err) { /* not playing yet */ }
          }
        }
        const due = seenAt + duration - DASH_EARLY_MS - now;
        // overdue by more than a refresh period: the stream has paused or stopped
        wait = due > 0 ? due : (due > -DASH_REFRESH_MS ? DASH_POLL_MS : DASH_REFRESH_MS);
      } catch (err) { /* next time */ }
      if (!aborter.signal.aborted) refresh = setTimeout(poll, Math.max(DASH_POLL_MS, wait));
    };
    refresh = setTimeout(poll, DASH_POLL_MS);
  }
  // by kvs:ts where the MPD has it (a segment's t moves when a gap before it is closed)
  const order = (r) => (r.ts !== null ? r.ts : r.t);
  const newestRow = () => {
    let last = null;
    for (const r of timeline ? timeline.rows : []) if (last === null || order(r) > order(last)) last = r;
    return last;
  };
  const newest = () => {
    let last = null;
    for (const r of timeline ? timeline.rows : []) {
      if (r.ts === null) continue;
      const end = r.ts + r.d * 1000 / timeline.scale;
      if (last === null || end > last) last = end;
    }
    return last;
  };
  return { player: dash, onScreen: (mediaTime) => dashStamp(timeline, mediaTime), newest, dispose };
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
  const newest = () => {
    const start = video.getStartDate ? video.getStartDate().getTime() : NaN;
    const end = video.seekable.length ? video.seekable.end(video.seekable.length - 1) : NaN;
    return Number.isFinite(start) && Number.isFinite(end) ? start + end * 1000 : null;
  };
  return { player: null, onScreen, newest, dispose };
}

async function setup(lib, video, protocol, options) {
  if (protocol === "DASH") return setupDash(lib, video, options);
  const Hls = lib.default;
  if (Hls.isSupported()) return setupHls(Hls, video, options);
  if (video.canPlayType("application/vnd.apple.mpegurl")) return setupNative(video, options);
  throw new Error("this browser plays HLS neither with hls.js nor by itself");
}

// What the label under the video says besides the time, from the video and the stream.
function statusOf(video, live, waitingSince, stoppedSince) {
  if (video.ended) return "ended";
  if (live && stoppedSince !== null) return "stopped";
  if (video.paused) return "paused";
  if (waitingSince !== null || video.readyState < 3) return "waiting";
  return "playing";
}

function labelOf(status, ms, newest) {
  const time = ms === null ? "—" : iso(Math.round(ms));
  if (status === "ended") return `${time} · ended`;
  if (status === "stopped") {
    const last = newest === null ? "" : `: no new fragment since ${iso(Math.round(newest))}`;
    return `${time} · live stream stopped${last}`;
  }
  if (status === "paused") return `${time} · paused`;
  return time;
}

function widget() {
  let library = null;  // the model's player library module (a promise), from initialize
  let bridge = null;  // the model's kernel bridge while its socket is open, from initialize
  let gone = false;

  function initialize({ model, signal }) {
    library = requestLibrary(model, signal).then(importSource);
    library.catch(() => { /* reported by the views that wait for it */ });
    // one socket per model, whatever the number of views; the comm fallback is no better
    // than trait changes (both reach the kernel between cells only): reports use the bridge
    // only when its socket is open
    kvsnbOpenBridge(model, {
      onJson: () => {},
      onBytes: () => {},
      onClose: () => { bridge = null; },  // reports go as trait changes again
    }).then((opened) => {
      if (gone || opened.kind !== "websocket") { opened.close(); return; }
      bridge = opened;
      bridge.sendJson({ type: "page", via: opened.kind, host: location.hostname });
    }).catch(() => { /* reports keep going as trait changes */ });
    return () => {
      gone = true;
      if (bridge) bridge.close();
      bridge = null;
    };
  }

  function render({ model, el }) {
    const box = document.createElement("div");
    box.className = "kvsnb-player";
    box.style.cssText = "display:inline-flex;flex-direction:column;gap:4px;font:13px monospace";
    const video = document.createElement("video");
    // no autoplay attribute: Chromium holds a muted autoplay-by-attribute video until it is
    // scrolled into view; the view starts it itself with play() (muted, so allowed)
    video.muted = true; video.playsInline = true; video.controls = true;
    video.style.cssText = `width:${model.get("width")}px;background:#000`;
    const stamp = document.createElement("div");
    stamp.className = "kvsnb-player-pdt";
    stamp.textContent = "—";
    box.append(video, stamp);
    el.append(box);

    const protocol = model.get("protocol");
    const live = model.get("live");
    const target = model.get("target_duration_s");
    let closed = false;
    let attached = null;  // {player, onScreen, newest, dispose} once set up
    let timer = null;
    let frameRequest = null;
    let presented = 0;  // the media time of the last frame presented (requestVideoFrameCallback)
    let frameAt = -Infinity;
    let mediaTime = 0;  // the media time of the frame on screen, as last reported
    let lastMs = null;  // the last frame time known (kept when the video has ended)
    let newestMs = null;
    let newestAt = performance.now();
    let waitingSince = null;
    let stalls = 0;
    let seeking = false;
    const send = (values) => {
      if (bridge) { bridge.sendJson({ type: "report", ...values }); return; }
      for (const [k, v] of Object.entries(values)) model.set(k, v);
      model.save_changes();
    };
    const fail = (message) => {
      if (closed) return;
      model.set("error", String(message)); model.save_changes();
      if (bridge) bridge.sendJson({ type: "report", error: String(message), status: "error" });
      stamp.textContent = "error: " + message;
    };
    // whether the video should play: a play() cut short by the player's own loading (which
    // rejects it and leaves the video paused) is tried again once the video can play; a pause
    // of a playable video (the kernel's, the controls') is kept
    let wantPlay = true;
    const resume = () => {
      if (!closed && wantPlay && video.paused && !video.ended) video.play().catch(() => {});
    };
    const onCommand = (msg) => {
      if (!msg) return;
      if (msg.type === "seek") video.currentTime = msg.time;
      else if (msg.type === "pause") { wantPlay = false; video.pause(); }
      else if (msg.type === "play") { wantPlay = true; resume(); }
    };
    const onPause = () => {
      pausedVisible = performance.now() - frameAt <= STALE_FRAME_MS;
      if (video.readyState >= 2 && !video.ended) wantPlay = false;
    };
    const onPlay = () => { wantPlay = true; };
    let presentedSinceSeek = false;
    let pausedVisible = false;  // frames were being presented when the video paused
    const onFrame = (now, meta) => {
      presented = meta.mediaTime;
      presentedSinceSeek = true;
      frameAt = now;
      frameRequest = video.requestVideoFrameCallback(onFrame);
    };
    // a stall: the playing video waited for data, then played on (not the first wait before
    // playing
    // at the start, nor after a seek, nor the wait at the end of a LIVE stream that stopped)
    let stalling = false;
    let played = false;
    const onWaiting = () => {
      if (waitingSince === null) waitingSince = performance.now();
      if (played && !seeking) stalling = true;
    };
    const onPlaying = () => {
      waitingSince = null;
      if (stalling) stalls += 1;
      stalling = false;
      played = true;
    };
    const onSeeking = () => { seeking = true; presentedSinceSeek = false; };
    const onSeeked = () => { seeking = false; };
    const listeners = { waiting: onWaiting, playing: onPlaying, seeking: onSeeking, seeked: onSeeked,
                        pause: onPause, play: onPlay, canplay: resume };
    for (const [name, fn] of Object.entries(listeners)) video.addEventListener(name, fn);
    const report = () => {
      // the frame shown: the last one presented (requestVideoFrameCallback) while playing,
      // while it waits for data (currentTime may run on past the last frame while the audio
      // lasts) and once paused (on a loaded machine the frame painted lags currentTime by a
      // few frames); currentTime's when no frame was presented lately (a hidden video
      // presents none, so the last one seen would be stale) or since a seek
      const now = performance.now();
      const stuck = !video.paused && !seeking && frameAt > -Infinity
        && (waitingSince !== null || video.readyState < 3);
      const stale = now - frameAt > STALE_FRAME_MS && !stuck;
      const still = pausedVisible && presentedSinceSeek;
      mediaTime = video.paused ? (still ? presented : video.currentTime)
        : stale ? video.currentTime : presented;
      let ms = attached.onScreen(mediaTime);
      // past the end of what it has (ended, or waiting at the end of a live stream), the last
      // frame stays on screen
      const held = video.ended || (!seeking && (waitingSince !== null || video.readyState < 2));
      if (ms === null && held) ms = lastMs;
      if (ms !== null) lastMs = ms;
      const newest = attached.newest();
      if (newest !== null && newest !== newestMs) { newestMs = newest; newestAt = now; }
      const atEnd = waitingSince !== null || video.readyState < 3;
      const quiet = now - newestAt > Math.max(STOPPED_MIN_MS, STOPPED_TARGETS * target * 1000);
      const status = statusOf(video, live, waitingSince, live && atEnd && quiet ? newestAt : null);
      stamp.textContent = labelOf(status, ms, newestMs);
      const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
      send({
        current_time: video.currentTime,
        paused: video.paused,
        on_screen_ms: ms === null ? -1 : Math.round(ms),
        decoded_frames: quality ? quality.totalVideoFrames : 0,
        dropped_frames: quality ? quality.droppedVideoFrames : 0,
        stalls,
        status,
      });
    };
    const dispose = () => {
      if (closed) return;
      closed = true;
      model.off("msg:custom", onCommand);
      clearInterval(timer);
      for (const [name, fn] of Object.entries(listeners)) video.removeEventListener(name, fn);
      if (frameRequest !== null) video.cancelVideoFrameCallback(frameRequest);
      try { if (attached) attached.dispose(); } catch (err) { /* closing */ }
      attached = null;
    };

    const start = async () => {
      const options = {
        url: model.get("url"),
        live,
        sync: model.get("live_sync_segments"),
        delay: model.get("live_delay_s"),
        target,
        fail,
      };
      const made = await setup(await library, video, protocol, options);
      if (closed) { made.dispose(); return; }  // the view went while it was set up
      attached = made;
      if (video.requestVideoFrameCallback) frameRequest = video.requestVideoFrameCallback(onFrame);
      video.kvsnbPlayer = made.player;  // for tests and the browser console
      video.kvsnbMediaTime = () => mediaTime;
      video.kvsnbOnScreen = (t) => (attached ? attached.onScreen(t) : null);
      timer = setInterval(report, model.get("report_ms"));
      model.on("msg:custom", onCommand);
      // started here, not by an autoplay attribute (and again on canplay, see resume). Not
      // DASH: dash.js plays by itself once its stream is set up (initialize's autoplay). A
      // play() before that fires the video's "play" event before dash.js listens for it, so
      // dash.js never hears that playback started, never schedules its MPD refreshes, and a
      // LIVE player stops a few seconds in, after the segments of the first MPD (seen in
      // JupyterLab with dash.js 5.2.1's debug log)
      if (protocol !== "DASH") resume();
    };
    start().catch((err) => fail(err && err.message ? err.message : String(err)));
    return dispose;
  }

  return { initialize, render };
}

// anywidget calls a default export that is a function once per model (it loads the module
// for each model), so `library` above belongs to one model.
export default widget;
// for the browser tests, which play a stream with the Player's own dash.js set-up
export { setupDash };
