// The page the browser tests drive (tests/browser/test_kvs_js_sdk.py): what a web app does
// with the official KVS WebRTC JS SDK (global KVSWebRTC) and the AWS SDK for JavaScript v3
// clients (global AwsKvs, bundled by esbuild), against Local KVS on another origin. Nothing
// here works around the SDKs: the signer is the SDK's own, the page is a normal page.
"use strict";

const log = (...args) => {
  const line = `${(performance.now() / 1000).toFixed(3)} ${args.join(" ")}`;
  console.log(line);
  document.getElementById("log").textContent += line + "\n";
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ICE on this machine stays on loopback: the page trickles only its 127.0.0.1 candidates
// (Chromium gathers loopback ones with --allow-loopback-in-peer-connection) and its relay
// candidates, which Local KVS's TURN server gives addresses on 127.0.0.2.
const isLoopback = (candidate) => / 127\.0\.0\.[12] /.test(candidate.candidate || "");

function clients(opts) {
  const base = { region: opts.region, credentials: opts.credentials };
  return {
    kv: new AwsKvs.KinesisVideo.KinesisVideoClient({ ...base, endpoint: opts.endpoint }),
    base,
  };
}

async function endpointsFor(kv, channelArn, role) {
  const { ResourceEndpointList } = await kv.send(
    new AwsKvs.KinesisVideo.GetSignalingChannelEndpointCommand({
      ChannelARN: channelArn,
      SingleMasterChannelEndpointConfiguration: { Protocols: ["WSS", "HTTPS", "WEBRTC"], Role: role },
    }),
  );
  return Object.fromEntries(ResourceEndpointList.map((e) => [e.Protocol, e.ResourceEndpoint]));
}

// A new stream and a channel of the same name, mapped for media storage.
async function storageChannel(kv, name) {
  const { StreamARN } = await kv.send(
    new AwsKvs.KinesisVideo.CreateStreamCommand({ StreamName: name, DataRetentionInHours: 24, MediaType: "video/h264,audio/aac" }),
  );
  const { ChannelARN } = await kv.send(new AwsKvs.KinesisVideo.CreateSignalingChannelCommand({ ChannelName: name }));
  await kv.send(
    new AwsKvs.KinesisVideo.UpdateMediaStorageConfigurationCommand({
      ChannelARN,
      MediaStorageConfiguration: { StreamARN, Status: "ENABLED" },
    }),
  );
  return { StreamARN, ChannelARN };
}

async function iceServers(base, endpoints, channelArn, clientId) {
  const signaling = new AwsKvs.Signaling.KinesisVideoSignalingClient({ ...base, endpoint: endpoints.HTTPS });
  const { IceServerList } = await signaling.send(
    new AwsKvs.Signaling.GetIceServerConfigCommand({ ChannelARN: channelArn, ClientId: clientId }),
  );
  return IceServerList.map((s) => ({ urls: s.Uris, username: s.Username, credential: s.Password }));
}

function openSignaling(opts, endpoints, channelArn, role, clientId) {
  const client = new KVSWebRTC.SignalingClient({
    channelARN: channelArn,
    channelEndpoint: endpoints.WSS,
    role,
    clientId,
    region: opts.region,
    credentials: opts.credentials,
    systemClockOffset: 0,
  });
  const opened = new Promise((resolve, reject) => {
    client.on("open", resolve);
    client.on("error", (e) => reject(new Error(`signaling error: ${e && e.message ? e.message : e}`)));
  });
  client.open();
  return { client, opened };
}

// Answer the storage session's offer (it has no senderClientId) with `stream`'s tracks and
// trickle candidates both ways; resolves with the peer connection once it is `connected`.
function answerStorageOffer(signaling, iceServerList, stream, t, onTrack, policy = "all") {
  return new Promise((resolve, reject) => {
    let pc = null;
    signaling.on("sdpOffer", async (offer, senderClientId) => {
      try {
        t.offer = performance.now();
        t.offerSender = senderClientId === undefined ? null : senderClientId;
        log("offer from", senderClientId === undefined ? "(no senderClientId)" : senderClientId);
        pc = new RTCPeerConnection({ iceServers: iceServerList, iceTransportPolicy: policy });
        t.pc = pc;
        pc.addEventListener("icecandidate", ({ candidate }) => {
          if (candidate && isLoopback(candidate)) signaling.sendIceCandidate(candidate, senderClientId);
        });
        pc.addEventListener("connectionstatechange", () => {
          log("peer connection", pc.connectionState);
          if (pc.connectionState === "connected" && !t.connected) {
            t.connected = performance.now();
            resolve(pc);
          }
          if (pc.connectionState === "failed") reject(new Error("peer connection failed"));
        });
        if (onTrack) pc.addEventListener("track", onTrack);
        await pc.setRemoteDescription(offer);
        for (const track of stream.getTracks()) pc.addTrack(track, stream);
        await pc.setLocalDescription(await pc.createAnswer());
        signaling.sendSdpAnswer(pc.localDescription, senderClientId);
        t.answer = performance.now();
      } catch (e) {
        reject(e);
      }
    });
    signaling.on("iceCandidate", (candidate) => {
      if (pc) pc.addIceCandidate(candidate).catch((e) => log("addIceCandidate", e));
    });
  });
}

const b64 = (bytes) => {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
};

// The master: a new stream and channel mapped for storage, the SDK's SignalingClient,
// JoinStorageSession, the fake camera and microphone for `seconds`, then what was stored
// read back from the page (ListFragments, GetImages, GetMediaForFragmentList).
window.kvsMaster = async (opts) => {
  const { kv, base } = clients(opts);
  const t = {};
  const name = opts.name;
  const { StreamARN, ChannelARN } = await storageChannel(kv, name);
  const endpoints = await endpointsFor(kv, ChannelARN, "MASTER");
  const ice = await iceServers(base, endpoints, ChannelARN);
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
  document.getElementById("local").srcObject = stream;
  const { client: signaling, opened } = openSignaling(opts, endpoints, ChannelARN, KVSWebRTC.Role.MASTER);
  await opened;
  log("signaling open", endpoints.WSS);
  const connected = answerStorageOffer(signaling, ice, stream, t);
  const storage = new AwsKvs.WebRtcStorage.KinesisVideoWebRTCStorageClient({ ...base, endpoint: endpoints.WEBRTC });
  t.join = performance.now();
  await storage.send(new AwsKvs.WebRtcStorage.JoinStorageSessionCommand({ channelArn: ChannelARN }));
  t.joined = performance.now();
  log("JoinStorageSession returned");
  const pc = await connected;
  const dataEndpoint = (
    await kv.send(new AwsKvs.KinesisVideo.GetDataEndpointCommand({ StreamARN, APIName: "LIST_FRAGMENTS" }))
  ).DataEndpoint;
  const archive = new AwsKvs.ArchivedMedia.KinesisVideoArchivedMediaClient({ ...base, endpoint: dataEndpoint });
  let fragments = [];
  const listDeadline = performance.now() + 60000;
  while (!fragments.length) {
    if (performance.now() > listDeadline) throw new Error("no fragment listed within 60 s");
    fragments = (await archive.send(new AwsKvs.ArchivedMedia.ListFragmentsCommand({ StreamARN }))).Fragments;
    if (!fragments.length) await sleep(100);
  }
  t.firstFragment = performance.now();
  log("first fragment listed");
  // keep sending until `seconds` of media have gone out since connected
  const stopAt = t.connected + opts.seconds * 1000;
  while (performance.now() < stopAt) await sleep(200);
  const stats = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp") stats[s.kind] = { packetsSent: s.packetsSent, framesEncoded: s.framesEncoded };
  });
  const codecs = [];
  (await pc.getStats()).forEach((s) => { if (s.type === "codec") codecs.push(s.mimeType); });
  pc.close();
  signaling.close();
  stream.getTracks().forEach((track) => track.stop());
  t.stopped = performance.now();
  // everything stored, read back from the page; the last fragment is stored a moment after
  // the master left, so wait until the stored time covers what was sent
  const sentMs = t.stopped - t.connected;
  const stored = (frags) => frags.reduce((sum, f) => sum + Number(f.FragmentLengthInMilliseconds), 0);
  const storeDeadline = performance.now() + 30000;
  while (stored(fragments) < sentMs - 3000 && performance.now() < storeDeadline) {
    await sleep(250);
    fragments = (await archive.send(new AwsKvs.ArchivedMedia.ListFragmentsCommand({ StreamARN }))).Fragments;
  }
  fragments.sort((a, b) => Number(a.FragmentNumber) - Number(b.FragmentNumber));
  const start = new Date(Math.min(...fragments.map((f) => f.ProducerTimestamp.getTime())));
  const end = new Date(Math.max(...fragments.map((f) => f.ProducerTimestamp.getTime() + Number(f.FragmentLengthInMilliseconds))));
  const images = await archive.send(
    new AwsKvs.ArchivedMedia.GetImagesCommand({
      StreamARN,
      ImageSelectorType: "PRODUCER_TIMESTAMP",
      StartTimestamp: start,
      EndTimestamp: end,
      SamplingInterval: 2000,
      Format: "JPEG",
    }),
  );
  const got = await archive.send(
    new AwsKvs.ArchivedMedia.GetMediaForFragmentListCommand({ StreamARN, Fragments: fragments.map((f) => f.FragmentNumber) }),
  );
  const mkv = await got.Payload.transformToByteArray();
  const rel = (x) => (x === undefined ? null : (x - t.join) / 1000);
  return {
    streamArn: StreamARN,
    channelArn: ChannelARN,
    endpoints,
    offerSender: t.offerSender,
    answerSdp: pc.localDescription ? pc.localDescription.sdp : null,
    stats,
    codecs,
    timings: {
      joinReturned: rel(t.joined),
      offer: rel(t.offer),
      answerSent: rel(t.answer),
      connected: rel(t.connected),
      firstFragmentListed: rel(t.firstFragment),
      sentSeconds: sentMs / 1000,
    },
    fragments: fragments.map((f) => ({ number: f.FragmentNumber, ms: Number(f.FragmentLengthInMilliseconds) })),
    images: images.Images.map((i) => ({ time: i.TimeStamp.getTime(), error: i.Error || null, data: i.ImageContent || null })),
    mkvContentType: got.ContentType,
    mkv: b64(mkv),
  };
};

// A viewer: JoinStorageSessionAsViewer on a channel whose master (kvsnb) is ingesting;
// the microphone goes up, the master's video comes down and is decoded.
window.kvsViewer = async (opts) => {
  const { kv, base } = clients(opts);
  const t = {};
  const endpoints = await endpointsFor(kv, opts.channelArn, "VIEWER");
  const ice = await iceServers(base, endpoints, opts.channelArn, opts.clientId);
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  const { client: signaling, opened } = openSignaling(opts, endpoints, opts.channelArn, KVSWebRTC.Role.VIEWER, opts.clientId);
  await opened;
  const remote = document.getElementById("remote");
  const connected = answerStorageOffer(signaling, ice, mic, t, ({ track, streams }) => {
    if (track.kind === "video") {
      remote.srcObject = streams[0] || new MediaStream([track]);
      remote.play().catch(() => {});
    }
  });
  const storage = new AwsKvs.WebRtcStorage.KinesisVideoWebRTCStorageClient({ ...base, endpoint: endpoints.WEBRTC });
  t.join = performance.now();
  await storage.send(
    new AwsKvs.WebRtcStorage.JoinStorageSessionAsViewerCommand({ channelArn: opts.channelArn, clientId: opts.clientId }),
  );
  const pc = await connected;
  const decoded = async () => {
    let frames = 0, audioSent = 0;
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") frames = s.framesDecoded || 0;
      if (s.type === "outbound-rtp" && s.kind === "audio") audioSent = s.packetsSent || 0;
    });
    return { frames, audioSent };
  };
  const first = await decoded();
  const deadline = performance.now() + opts.seconds * 1000;
  let last = first;
  while (performance.now() < deadline) {
    await sleep(250);
    last = await decoded();
  }
  const video = { width: remote.videoWidth, height: remote.videoHeight };
  pc.close();
  signaling.close();
  mic.getTracks().forEach((track) => track.stop());
  return {
    offerSender: t.offerSender,
    answerSdp: pc.localDescription ? pc.localDescription.sdp : null,
    framesDecoded: [first.frames, last.frames],
    audioPacketsSent: last.audioSent,
    video,
    connectedAfter: (t.connected - t.join) / 1000,
  };
};

// Errors reach the page as the AWS error, through CORS: name, status and message.
window.kvsErrors = async (opts) => {
  const { kv, base } = clients(opts);
  const caught = async (what, fn) => {
    try {
      await fn();
      return { what, name: null };
    } catch (e) {
      return { what, name: e.name, status: e.$metadata ? e.$metadata.httpStatusCode : null, message: e.message };
    }
  };
  const { ChannelARN } = await kv.send(new AwsKvs.KinesisVideo.CreateSignalingChannelCommand({ ChannelName: opts.name }));
  const storage = new AwsKvs.WebRtcStorage.KinesisVideoWebRTCStorageClient({ ...base, endpoint: `${opts.endpoint}/webrtc` });
  return [
    await caught("DescribeSignalingChannel missing", () =>
      kv.send(new AwsKvs.KinesisVideo.DescribeSignalingChannelCommand({ ChannelName: `${opts.name}-missing` }))),
    await caught("GetSignalingChannelEndpoint WEBRTC without storage", () => endpointsFor(kv, ChannelARN, "MASTER")),
    await caught("CreateSignalingChannel bad TTL", () =>
      kv.send(new AwsKvs.KinesisVideo.CreateSignalingChannelCommand({
        ChannelName: `${opts.name}-ttl`,
        SingleMasterConfiguration: { MessageTtlSeconds: 1000 },
      }))),
    await caught("JoinStorageSession missing channel", () =>
      storage.send(new AwsKvs.WebRtcStorage.JoinStorageSessionCommand({
        channelArn: ChannelARN.replace(`:channel/${opts.name}/`, `:channel/${opts.name}-missing/`),
      }))),
  ];
};

// What a master's ICE does against the storage session: with the TURN servers from
// GetIceServerConfig (opts.turn), relay-only (opts.forceTurn, the samples' "force TURN"),
// or with none (a page that forgot TURN). JoinStorageSession answers 200 either way; the
// result says whether the peer connection came up and over which candidate pair.
window.kvsMasterIce = async (opts) => {
  const { kv, base } = clients(opts);
  const t = {};
  const name = opts.name;
  const { ChannelARN } = await storageChannel(kv, name);
  const endpoints = await endpointsFor(kv, ChannelARN, "MASTER");
  const ice = opts.turn ? await iceServers(base, endpoints, ChannelARN) : [];
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
  const { client: signaling, opened } = openSignaling(opts, endpoints, ChannelARN, KVSWebRTC.Role.MASTER);
  await opened;
  const connected = answerStorageOffer(signaling, ice, stream, t, null, opts.forceTurn ? "relay" : "all");
  const storage = new AwsKvs.WebRtcStorage.KinesisVideoWebRTCStorageClient({ ...base, endpoint: endpoints.WEBRTC });
  const joined = await storage.send(new AwsKvs.WebRtcStorage.JoinStorageSessionCommand({ channelArn: ChannelARN }));
  const result = { iceServers: ice.length, joinStatus: joined.$metadata.httpStatusCode };
  try {
    const pc = await connected;
    result.state = pc.connectionState;
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (pair) {
      result.local = stats.get(pair.localCandidateId).candidateType;
      result.remote = stats.get(pair.remoteCandidateId).candidateType;
    }
  } catch (e) {
    result.state = t.pc ? t.pc.connectionState : "no offer";
    result.error = String(e.message || e);
  }
  if (t.pc) t.pc.close();
  signaling.close();
  for (const track of stream.getTracks()) track.stop();
  return result;
};
