// Test driver around the real socket.io-client 4.8 that the Frappe desk ships.
//
// gsocket must be indistinguishable from the Node server to this client, so the tests steer
// the genuine library rather than a Python imitation of it. The Python side (node_client.py)
// writes one JSON command per line on stdin; every socket event comes back as one JSON line
// on stdout. The process exits when stdin closes, so it can never outlive its test.
"use strict";

const readline = require("readline");
const { io } = require("socket.io-client");

const sockets = new Map();

function out(obj) {
  let line;
  try {
    line = JSON.stringify(obj);
  } catch (err) {
    line = JSON.stringify({ type: "error", message: `unserialisable output: ${err.message}` });
  }
  process.stdout.write(line + "\n");
}

// Header names go lower-case: in Node, engine.io-client adds its cookie jar under "cookie"
// for the websocket upgrade, which would silently replace a "Cookie" given by the test.
function normaliseHeaders(headers) {
  const result = {};
  for (const [name, value] of Object.entries(headers || {})) {
    result[name.toLowerCase()] = value;
  }
  return result;
}

function transportName(socket) {
  const engine = socket.io.engine;
  return engine && engine.transport ? engine.transport.name : null;
}

function connect(cmd) {
  const id = cmd.id;
  if (sockets.has(id)) {
    out({ id, type: "error", message: `socket id ${id} already in use` });
    return;
  }
  const reconnection = Boolean(cmd.reconnection);
  const options = {
    transports: cmd.transports || ["polling", "websocket"],
    extraHeaders: normaliseHeaders(cmd.headers),
    withCredentials: true,
    reconnection,
    forceNew: true,
    ...(reconnection ? { reconnectionAttempts: 3 } : {}),
    ...(cmd.options || {}),
  };
  const socket = io(cmd.url, options);
  sockets.set(id, socket);
  const manager = socket.io;

  socket.on("connect", () => {
    // pid, offset and recovered: socket.io-client's connection state recovery, as it stands
    out({
      id,
      type: "connect",
      sid: socket.id,
      transport: transportName(socket),
      pid: socket._pid ?? null,
      offset: socket._lastOffset ?? null,
      recovered: Boolean(socket.recovered),
    });
  });
  socket.on("connect_error", (err) => {
    out({ id, type: "connect_error", message: err.message, data: err.data ?? null });
  });
  socket.on("disconnect", (reason, details) => {
    const description = details && details.description ? String(details.description) : null;
    out({ id, type: "disconnect", reason, description });
  });
  socket.onAny((event, ...args) => {
    out({ id, type: "event", event, args });
  });

  manager.on("open", () => {
    manager.engine.on("upgrade", (transport) => {
      out({ id, type: "upgrade", transport: transport.name });
    });
    manager.engine.on("upgradeError", (err) => {
      out({ id, type: "upgrade_error", message: err.message });
    });
  });
  manager.on("reconnect_attempt", (attempt) => out({ id, type: "reconnect_attempt", attempt }));
  manager.on("reconnect", (attempt) => out({ id, type: "reconnect", attempt }));
  manager.on("reconnect_error", (err) => {
    out({ id, type: "reconnect_error", message: err.message });
  });
  manager.on("reconnect_failed", () => out({ id, type: "reconnect_failed" }));
}

function withSocket(cmd, action) {
  const socket = sockets.get(cmd.id);
  if (!socket) {
    out({ id: cmd.id, type: "error", message: `no socket with id ${cmd.id}` });
    return;
  }
  action(socket);
}

function emit(cmd) {
  withSocket(cmd, (socket) => {
    const args = cmd.args || [];
    if (cmd.ack) {
      socket.emit(cmd.event, ...args, (...ackArgs) => {
        out({ id: cmd.id, type: "ack", seq: cmd.seq, args: ackArgs });
      });
    } else {
      socket.emit(cmd.event, ...args);
    }
  });
}

function close(cmd) {
  withSocket(cmd, (socket) => {
    socket.disconnect();
    sockets.delete(cmd.id);
    out({ id: cmd.id, type: "closed" });
  });
}

function exit() {
  for (const socket of sockets.values()) {
    socket.disconnect();
  }
  sockets.clear();
  process.exit(0);
}

const commands = {
  connect,
  emit,
  close,
  // Close the transport under the socket without a socket.io DISCONNECT, which the client
  // sees as a lost connection ("transport close") and recovers from when reconnection is on.
  drop: (cmd) => withSocket(cmd, (socket) => socket.io.engine.transport.close()),
  // Send a raw Socket.IO packet string (e.g. a second CONNECT "0/site,") over the engine.
  raw: (cmd) => withSocket(cmd, (socket) => socket.io.engine.write(cmd.data)),
  exit,
};

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) {
    return;
  }
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    out({ type: "error", message: `bad command line: ${err.message}` });
    return;
  }
  const handler = commands[cmd.cmd];
  if (!handler) {
    out({ id: cmd.id ?? null, type: "error", message: `unknown command ${cmd.cmd}` });
    return;
  }
  try {
    handler(cmd);
  } catch (err) {
    out({ id: cmd.id ?? null, type: "error", message: `${cmd.cmd} failed: ${err.stack || err}` });
  }
});
lines.on("close", exit);

out({ type: "ready", version: require("socket.io-client/package.json").version });
