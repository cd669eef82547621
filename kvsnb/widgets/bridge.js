// The page side of the kernel bridge (kvsnb/widgets/bridge.py), shared by the widgets that talk
// to the kernel while a cell runs (BrowserSession, Player). Plain declarations, no import or
// export: the Python side puts this file in front of a widget's ES module (bridge.page_js()).
//
// kvsnbOpenBridge(model, {onJson, onBytes, onClose}) reads the widget's `bridge_token` and
// `bridge_urls` traits and resolves {kind: "websocket" | "comm", url, sendJson, sendBytes, close}.

const KVSNB_BRIDGE_OPEN_MS = 4000;  // per URL: then the next one, then the comm fallback

function kvsnbBridgeUrl(url) {
  if (url.startsWith("ws:") || url.startsWith("wss:")) return url;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${url}`;
}

function kvsnbBridgeSocket(url, token, handlers) {
  return new Promise((resolve) => {
    let ws;
    try { ws = new WebSocket(kvsnbBridgeUrl(url)); } catch (e) { resolve(null); return; }
    ws.binaryType = "arraybuffer";
    let welcomed = false;
    const timer = setTimeout(() => { if (!welcomed) { ws.close(); resolve(null); } }, KVSNB_BRIDGE_OPEN_MS);
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", token }));
    ws.onmessage = (ev) => {
      if (!welcomed) {
        welcomed = true;
        clearTimeout(timer);
        resolve(ws);
        return;
      }
      if (typeof ev.data === "string") handlers.onJson(JSON.parse(ev.data));
      else handlers.onBytes(new Uint8Array(ev.data));
    };
    ws.onclose = () => { clearTimeout(timer); if (!welcomed) resolve(null); else handlers.onClose(); };
    ws.onerror = () => {};
  });
}

// Opens the kernel bridge: the WebSocket URLs in order (through the Jupyter server's proxy,
// then directly, or the reverse when this page is on the kernel's machine), then the widget's
// comm messages. Resolves {kind, url, sendJson, sendBytes, close}.
async function kvsnbOpenBridge(model, handlers) {
  const token = model.get("bridge_token");
  let urls = (model.get("bridge_urls") || []).slice();
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(location.hostname);
  if (loopback) urls.sort((a, b) => Number(b.startsWith("ws://127.")) - Number(a.startsWith("ws://127.")));
  for (const url of urls) {
    const ws = await kvsnbBridgeSocket(url, token, handlers);
    console.log(`kvsnb bridge: ${url} ${ws ? "open" : "not reachable"}`);
    if (ws) {
      return {
        kind: "websocket", url,
        sendJson: (obj) => { if (ws.readyState === 1) ws.send(JSON.stringify(obj)); },
        sendBytes: (data) => { if (ws.readyState === 1) ws.send(data); },
        close: () => ws.close(),
      };
    }
  }
  // the comm fallback: works between cells only (the kernel reads comm messages then)
  const onMsg = (msg, buffers) => {
    if (!msg || msg.type !== "kvsnb-bridge") return;
    if (msg.kind === "json") handlers.onJson(msg.data);
    else if (msg.kind === "bytes") for (const b of buffers || []) handlers.onBytes(new Uint8Array(b.buffer || b));
  };
  model.on("msg:custom", onMsg);
  model.send({ type: "kvsnb-bridge", kind: "hello", token });
  return {
    kind: "comm", url: null,
    sendJson: (obj) => model.send({ type: "kvsnb-bridge", kind: "json", data: obj }),
    sendBytes: (data) => model.send({ type: "kvsnb-bridge", kind: "bytes" }, undefined, [data]),
    close: () => model.off("msg:custom", onMsg),
  };
}
