// The front end of kvsnb.widgets.BrowserSession (an anywidget ES module); see browser_session.py.
//
// The page never calls an AWS API and holds no key: the kernel does the set-up, the signaling
// and the join calls, and sends this page the storage session's offer, candidates and the
// IceServerList over the kernel bridge (kvsnb/widgets/bridge.py). The page opens the camera
// and microphone, answers with its RTCPeerConnection and reports states, candidates, the first
// frame and getStats figures. One controller per model (in initialize), so two views of one
// widget share one session; each view draws the controls, the video and the figures.
//
// When `transport` resolves to "kernel", the media goes through the kernel instead: the
// functions kvsnbKernelMaster / kvsnbKernelViewer of browser_media.js (concatenated before
// this file by the Python side, when it exists) are called. kvsnbOpenBridge is bridge.js's (put
// in front of this file too).

const STATS_MS = 1000;
const FIRST_FRAME_POLL_MS = 200;

function candidateText(report, id) {
  const c = id && report.get(id);
  if (!c) return null;
  return `${c.candidateType} ${c.address || c.ip}:${c.port}`;
}

class Controller {
  constructor(model) {
    this.model = model;
    this.role = model.get("role");
    this.views = new Set();
    this.stream = null;       // the camera/microphone
    this.remote = new MediaStream();
    this.peer = null;         // {n, pc, timer, first}
    this.kernelPath = null;
    this.onBytes = null;      // the kernel path's binary handler
    this.prev = null;
    this.bridge = null;
    this.ready = kvsnbOpenBridge(model, {
      onJson: (msg) => this.onMessage(msg).catch((e) => this.log(`error: ${e}`)),
      onBytes: (data) => { if (this.onBytes) this.onBytes(data); },
      onClose: () => this.redraw(),
    }).then((bridge) => {
      this.bridge = bridge;
      bridge.sendJson({ type: "page", via: bridge.kind, url: bridge.url, host: location.hostname });
      this.redraw();
      return bridge;
    });
  }

  log(text) { console.log(`kvsnb BrowserSession: ${text}`); }
  send(obj) { if (this.bridge) this.bridge.sendJson(obj); }
  redraw() { for (const v of this.views) v.draw(); }

  attach() {
    for (const v of this.views) v.attach(this.role === "MASTER" ? this.stream : this.remote);
  }

  async openMedia(msg) {
    if (this.stream) return this.stream;
    const [w, h] = String(this.model.get("resolution") || "640x480").split("x").map(Number);
    const device = this.model.get("device_id");
    const video = msg.video === false ? false
      : { width: { ideal: w }, height: { ideal: h }, ...(device ? { deviceId: { exact: device } } : {}) };
    this.stream = await navigator.mediaDevices.getUserMedia({ video, audio: msg.audio !== false });
    this.attach();
    return this.stream;
  }

  async onMessage(msg) {
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "media") {
      try {
        const stream = await this.openMedia(msg);
        const v = stream.getVideoTracks()[0];
        const a = stream.getAudioTracks()[0];
        const s = v ? v.getSettings() : {};
        const devices = (await navigator.mediaDevices.enumerateDevices())
          .filter((d) => d.kind === "videoinput").map((d) => ({ id: d.deviceId, label: d.label }));
        this.send({ type: "media_ready", video: v ? v.label : null, audio: a ? a.label : null,
                    width: s.width || null, height: s.height || null, devices });
      } catch (e) {
        this.send({ type: "media_error", name: e.name || "Error", message: e.message || String(e) });
      }
    } else if (msg.type === "offer") {
      await this.answer(msg);
    } else if (msg.type === "candidate") {
      const p = this.peer;
      if (p && p.n === msg.peer) await p.pc.addIceCandidate(msg.candidate).catch((e) => this.log(`candidate: ${e}`));
    } else if (msg.type === "close_peer") {
      if (this.peer && this.peer.n === msg.peer) this.closePeer();
    } else if (msg.type === "stop") {
      this.stop();
    } else if (msg.type === "kernel_start") {
      await this.startKernelPath(msg);
    } else if (msg.type === "kernel_stop") {
      this.stopKernelPath();
    }
  }

  async answer(msg) {
    this.closePeer();
    const pc = new RTCPeerConnection({
      iceServers: msg.iceServers || [],
      iceTransportPolicy: msg.iceTransportPolicy || "all",
    });
    const peer = { n: msg.peer, pc, timer: null, first: false };
    this.peer = peer;
    const report = () => this.send({ type: "peer_state", peer: peer.n, connection: pc.connectionState,
                                     ice: pc.iceConnectionState });
    pc.addEventListener("icecandidate", ({ candidate }) => {
      if (candidate && candidate.candidate) this.send({ type: "local_candidate", peer: peer.n, candidate: candidate.toJSON() });
    });
    pc.addEventListener("connectionstatechange", report);
    pc.addEventListener("iceconnectionstatechange", report);
    pc.addEventListener("track", (ev) => {
      if (this.role !== "VIEWER") return;  // a master does not play the session's audio mix
      for (const t of this.remote.getTracks()) if (t.kind === ev.track.kind) this.remote.removeTrack(t);
      this.remote.addTrack(ev.track);
      this.attach();
    });
    try {
      await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
      for (const tr of pc.getTransceivers()) {
        const kind = tr.receiver.track.kind;
        const track = this.stream && (this.role === "MASTER" || kind === "audio")
          ? this.stream.getTracks().find((t) => t.kind === kind) : null;
        if (track) {
          await tr.sender.replaceTrack(track);
          if (tr.sender.setStreams) tr.sender.setStreams(this.stream);
          tr.direction = kind === "video" ? "sendonly" : "sendrecv";
        } else {
          tr.direction = "recvonly";
        }
      }
      await pc.setLocalDescription(await pc.createAnswer());
      this.send({ type: "answer", peer: peer.n, sdp: pc.localDescription.sdp });
    } catch (e) {
      this.send({ type: "peer_error", peer: peer.n, message: `${e.name || "Error"}: ${e.message || e}` });
      return;
    }
    const tick = async () => {
      if (this.peer !== peer) return;
      await this.stats(peer).catch((e) => this.log(`stats: ${e}`));
      peer.timer = setTimeout(tick, peer.first ? STATS_MS : FIRST_FRAME_POLL_MS);
    };
    peer.timer = setTimeout(tick, FIRST_FRAME_POLL_MS);
  }

  async stats(peer) {
    const report = await peer.pc.getStats();
    const row = { type: "stats", peer: peer.n, time: Date.now(), state: peer.pc.connectionState };
    let pairId = null;
    report.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") {
        Object.assign(row, { frames_sent: s.framesSent, frames_encoded: s.framesEncoded,
          video_bytes_sent: s.bytesSent, video_packets_sent: s.packetsSent,
          width: s.frameWidth, height: s.frameHeight });
      } else if (s.type === "outbound-rtp" && s.kind === "audio") {
        Object.assign(row, { audio_packets_sent: s.packetsSent, audio_bytes_sent: s.bytesSent });
      } else if (s.type === "inbound-rtp" && s.kind === "video") {
        Object.assign(row, { frames_received: s.framesReceived, frames_decoded: s.framesDecoded,
          video_bytes_received: s.bytesReceived, video_packets_received: s.packetsReceived,
          width: s.frameWidth, height: s.frameHeight });
      } else if (s.type === "inbound-rtp" && s.kind === "audio") {
        Object.assign(row, { audio_packets_received: s.packetsReceived, audio_bytes_received: s.bytesReceived });
      } else if (s.type === "transport" && s.selectedCandidatePairId) {
        pairId = s.selectedCandidatePairId;
      }
    });
    const pair = pairId ? report.get(pairId) : null;
    if (pair) {
      row.rtt_ms = pair.currentRoundTripTime !== undefined ? Math.round(pair.currentRoundTripTime * 1000) : null;
      row.local_candidate = candidateText(report, pair.localCandidateId);
      row.remote_candidate = candidateText(report, pair.remoteCandidateId);
    }
    const bytes = (row.video_bytes_sent || 0) + (row.video_bytes_received || 0);
    if (this.prev && this.prev.peer === peer.n && row.time > this.prev.time) {
      row.video_kbps = Math.round(((bytes - this.prev.bytes) * 8) / (row.time - this.prev.time));
    }
    this.prev = { peer: peer.n, time: row.time, bytes };
    if (!peer.first) {
      if (this.role === "MASTER" && row.frames_sent > 0) peer.first = "sent";
      if (this.role === "VIEWER" && row.frames_decoded > 0) peer.first = "decoded";
      if (peer.first) this.send({ type: "first_frame", peer: peer.n, kind: peer.first });
    }
    this.send(row);
  }

  closePeer() {
    const p = this.peer;
    this.peer = null;
    if (!p) return;
    clearTimeout(p.timer);
    p.pc.close();
  }

  stop() {
    this.closePeer();
    this.stopKernelPath();
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    for (const t of this.remote.getTracks()) this.remote.removeTrack(t);
    this.attach();
  }

  // The kernel path (browser_media.js, by another module): the kernel sends
  // {type: "kernel_start"} once it has chosen that path; binary messages go both ways.
  async startKernelPath(msg) {
    const sendBytes = (data) => this.bridge && this.bridge.sendBytes(data);
    const log = (text) => this.log(text);
    try {
      if (this.role === "MASTER") {
        if (typeof kvsnbKernelMaster !== "function") throw new Error("browser_media.js is not loaded");
        const stream = await this.openMedia(msg);
        this.kernelPath = await kvsnbKernelMaster(stream, sendBytes, log, (fn) => { this.onBytes = fn; });
      } else {
        if (typeof kvsnbKernelViewer !== "function") throw new Error("browser_media.js is not loaded");
        const mic = await this.openMedia({ video: false, audio: true });
        const view = Array.from(this.views)[0];
        const target = view ? view.canvas : document.createElement("canvas");
        this.kernelPath = await kvsnbKernelViewer(target, (fn) => { this.onBytes = fn; }, mic, sendBytes, log);
      }
      this.send({ type: "kernel_started" });
    } catch (e) {
      this.send({ type: "media_error", name: e.name || "Error", message: e.message || String(e) });
    }
  }

  stopKernelPath() {
    if (this.kernelPath && this.kernelPath.stop) this.kernelPath.stop();
    this.kernelPath = null;
    this.onBytes = null;
  }

  dispose() {
    this.stop();
    if (this.bridge) this.bridge.close();
  }
}

// anywidget hands initialize and render different proxies of one model: the controller is
// found by the model's bridge token
const controllers = new Map();
function controllerOf(model) {
  const key = model.get("bridge_token");
  if (!controllers.has(key)) controllers.set(key, new Controller(model));
  return controllers.get(key);
}

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  Object.assign(e, attrs);
  if (text) e.textContent = text;
  return e;
}

class View {
  constructor(model, root, controller) {
    this.model = model;
    this.c = controller;
    this.root = el("div", { className: "kvsnb-browser-session" });
    this.root.style.cssText = "font: 13px sans-serif; display: flex; flex-direction: column; gap: 6px;";
    const bar = el("div");
    bar.style.cssText = "display: flex; gap: 8px; align-items: center; flex-wrap: wrap;";
    this.title = el("b");
    this.start = el("button", { className: "jupyter-button" }, "Start");
    this.stopButton = el("button", { className: "jupyter-button" }, "Stop");
    this.start.onclick = () => this.c.send({ type: "ui", action: "start" });
    this.stopButton.onclick = () => this.c.send({ type: "ui", action: "stop" });
    this.device = el("select", { title: "camera" });
    this.device.onchange = () => { model.set("device_id", this.device.value); model.save_changes(); };
    this.resolution = el("select", { title: "resolution" });
    for (const r of model.get("resolutions") || []) this.resolution.append(el("option", { value: r }, r));
    this.resolution.onchange = () => { model.set("resolution", this.resolution.value); model.save_changes(); };
    this.stateLabel = el("span");
    bar.append(this.title, this.start, this.stopButton, this.device, this.resolution, this.stateLabel);
    this.error = el("div", { className: "kvsnb-error" });
    this.error.style.color = "#cf222e";
    this.note = el("div");
    this.note.style.color = "#57606a";
    this.video = el("video", { autoplay: true, muted: true, playsInline: true, controls: true });
    this.video.muted = true;
    this.video.style.cssText = `width: ${model.get("width")}px; background: #000;`;
    this.canvas = el("canvas");
    this.canvas.style.cssText = `width: ${model.get("width")}px; display: none; background: #000;`;
    this.stats = el("div", { className: "kvsnb-stats" });
    this.stats.style.fontFamily = "monospace";
    this.timeline = el("table", { className: "kvsnb-timeline" });
    this.root.append(bar, this.error, this.note, this.video, this.canvas, this.stats, this.timeline);
    root.append(this.root);
    this.draw();
  }

  attach(stream) {
    if (this.video.srcObject !== stream) this.video.srcObject = stream;
    if (stream) this.video.play().catch(() => {});
  }

  draw() {
    const m = this.model;
    const role = m.get("role");
    this.title.textContent = `${role === "MASTER" ? "Master (your camera)" : "Viewer"} · ${m.get("channel")}`;
    const state = m.get("state");
    const running = ["joining", "connected", "reconnecting", "starting"].includes(state);
    this.start.disabled = running;
    this.stopButton.disabled = !running;
    this.stateLabel.textContent = `state: ${state}`;
    this.error.textContent = m.get("error") ? `Error: ${m.get("error")}` : "";
    const b = this.c.bridge;
    const bridge = !b ? "bridge: connecting…"
      : b.kind === "comm" ? "bridge: comm messages (the kernel socket could not be opened: the page "
        + "hears from the kernel only between cells)" : "bridge: kernel socket";
    const used = m.get("transport_used");
    this.note.textContent = `${bridge} · transport: ${used || m.get("transport")}`;
    const kernelViewer = (used || "").startsWith("kernel") && role === "VIEWER";
    this.video.style.display = kernelViewer ? "none" : "";
    this.canvas.style.display = kernelViewer ? "" : "none";
    const devices = m.get("devices") || [];
    this.device.style.display = role === "MASTER" ? "" : "none";
    this.resolution.style.display = role === "MASTER" ? "" : "none";
    this.resolution.value = m.get("resolution");
    this.device.replaceChildren(el("option", { value: "" }, "default camera"),
      ...devices.map((d) => el("option", { value: d.id }, d.label || d.id.slice(0, 8))));
    this.device.value = m.get("device_id") || "";
    const s = m.get("stats") || {};
    const parts = [];
    if (role === "MASTER") parts.push(`frames sent ${s.frames_sent ?? "–"} (encoded ${s.frames_encoded ?? "–"})`);
    else parts.push(`frames decoded ${s.frames_decoded ?? "–"} (received ${s.frames_received ?? "–"})`);
    parts.push(`${s.video_kbps ?? "–"} kbit/s`, `rtt ${s.rtt_ms ?? "–"} ms`);
    if (s.width) parts.push(`${s.width}x${s.height}`);
    if (s.local_candidate) parts.push(`pair ${s.local_candidate} ⇄ ${s.remote_candidate}`);
    this.stats.textContent = parts.join(" · ");
    const rows = m.get("timeline_rows") || [];
    const head = el("tr");
    for (const h of ["step", "t_ms", "delta_ms", "detail"]) head.append(el("th", {}, h));
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    for (const r of rows) {
      const tr = el("tr");
      for (const k of ["step", "t_ms", "delta_ms", "detail"]) tr.append(el("td", {}, String(r[k] ?? "")));
      tbody.append(tr);
    }
    this.timeline.replaceChildren(thead, tbody);
  }
}

export default {
  initialize({ model }) {
    const key = model.get("bridge_token");
    const controller = controllerOf(model);
    return () => { controller.dispose(); controllers.delete(key); };
  },
  render({ model, el: root }) {
    const controller = controllerOf(model);
    const view = new View(model, root, controller);
    controller.views.add(view);
    controller.attach();
    const redraw = () => view.draw();
    const names = ["state", "error", "stats", "timeline_rows", "devices", "transport_used", "resolution", "device_id"];
    for (const n of names) model.on(`change:${n}`, redraw);
    return () => {
      controller.views.delete(view);
      for (const n of names) model.off(`change:${n}`, redraw);
      view.video.srcObject = null;
    };
  },
};
