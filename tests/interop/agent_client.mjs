// A keyagent client in JavaScript (Node >= 20): what an app in another language needs, and nothing more.
//
//   const agent = await AgentClient.connect(process.env.KEYAGENT_SOCK);   // checks first, then connects
//   const id = await agent.call({ identity: {} });                        // -> { identity: {...} }
//   agent.close();
//
// Wire (proto/keyagent/agent.proto): frames of a 4-byte big-endian length + one serialized message; the client
// sends keyagent.v1.Request, the agent answers each with one keyagent.v1.Response, in order. A Response whose
// oneof is `error` carries a stable Error.Code (AgentError.code is its enum NAME, e.g. "NO_SESSION").
//
// Before sending anything the client checks that it talks to an agent of its own user (README "Clients in other
// languages"): the socket's directory is a real directory owned by us (or root) that nobody else can write to,
// the socket is a socket owned by us (or root), and the process serving it runs as us (or root). C, Go, Rust and
// Python read the peer's uid with getsockopt(SO_PEERCRED); Node has no API for that, so on Linux this client
// finds the process that holds the listening socket of that path (/proc/net/unix + /proc/PID/fd) and reads its
// uid. Checking the directory is what makes this sound: nobody else can put a socket into it.

import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const PROTO = path.resolve(HERE, "..", "..", "proto", "keyagent", "agent.proto");
const MAX_FRAME = 16 * 1024 * 1024;

let types = null;
async function loadTypes() {
  if (types === null) {
    const root = await protobuf.load(PROTO);
    types = {
      Request: root.lookupType("keyagent.v1.Request"),
      Response: root.lookupType("keyagent.v1.Response"),
      Code: root.lookupEnum("keyagent.v1.Error.Code"),
    };
  }
  return types;
}

export class AgentError extends Error {
  constructor(code, message, reason = "", reply = null) {
    super(`${code}: ${message}`);
    this.code = code; // the Error.Code name, stable across versions
    this.reason = reason;
    this.reply = reply;
  }
}

/** Refusals of the pre-connect checks carry code UNSAFE_SOCKET (never sent by the agent: a client-side name). */
export class UnsafeSocket extends Error {
  constructor(message) {
    super(message);
    this.code = "UNSAFE_SOCKET";
  }
}

function trusted(uid) {
  return uid === process.getuid() || uid === 0;
}

/** The uid of the process listening on `sockPath` (Linux /proc), or null if it cannot be determined. */
export function listenerUid(sockPath) {
  let inode = null;
  // /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; flag 0x10000 = listening
  for (const line of fs.readFileSync("/proc/net/unix", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f.slice(7).join(" ") === sockPath && (parseInt(f[3], 16) & 0x10000)) {
      inode = f[6];
      break;
    }
  }
  if (inode === null) return null;
  const want = `socket:[${inode}]`;
  for (const pid of fs.readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    let fds;
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // another user's process, or gone
    }
    for (const fd of fds) {
      let target;
      try {
        target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (target === want) {
        const m = /^Uid:\s+(\d+)\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
        if (m) return Number(m[2]); // effective uid
      }
    }
  }
  return null;
}

/** Throws UnsafeSocket unless the socket path is one only our user (or root) could have created and serves. */
export function checkSocket(sockPath) {
  if (!path.isAbsolute(sockPath)) throw new UnsafeSocket(`socket path ${sockPath} is not absolute`);
  const dir = path.dirname(sockPath);
  const d = fs.lstatSync(dir);
  if (!d.isDirectory()) throw new UnsafeSocket(`socket directory ${dir} is not a directory (symlink?)`);
  if (!trusted(d.uid)) throw new UnsafeSocket(`socket directory ${dir} is owned by uid ${d.uid}, not by us`);
  if (d.mode & 0o022) {
    throw new UnsafeSocket(`socket directory ${dir} has mode ${(d.mode & 0o777).toString(8)}: others may write`);
  }
  const s = fs.lstatSync(sockPath);
  if (!s.isSocket()) throw new UnsafeSocket(`${sockPath} is not a socket`);
  if (!trusted(s.uid)) throw new UnsafeSocket(`socket ${sockPath} is owned by uid ${s.uid}, not by us`);
  const peer = listenerUid(sockPath);
  if (peer === null) throw new UnsafeSocket(`cannot tell which user serves ${sockPath}`);
  if (!trusted(peer)) throw new UnsafeSocket(`the process serving ${sockPath} runs as uid ${peer}, not as us`);
  return { dirMode: d.mode & 0o777, socketUid: s.uid, peerUid: peer };
}

export class AgentClient {
  constructor(sock, t) {
    this.sock = sock;
    this.t = t;
    this.buf = Buffer.alloc(0);
    this.waiters = [];
    this.failure = null;
    sock.on("data", (chunk) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.drain();
    });
    const fail = (err) => {
      this.failure = err || new AgentError("UNAVAILABLE", "the agent closed the connection");
      for (const w of this.waiters.splice(0)) w.reject(this.failure);
    };
    sock.on("error", fail);
    sock.on("close", () => fail(null));
  }

  static async connect(sockPath = process.env.KEYAGENT_SOCK) {
    if (!sockPath) throw new UnsafeSocket("no socket path (set KEYAGENT_SOCK)");
    const checked = checkSocket(sockPath);
    const t = await loadTypes();
    const sock = await new Promise((resolve, reject) => {
      const s = net.createConnection(sockPath);
      s.once("connect", () => resolve(s));
      s.once("error", reject);
    });
    const client = new AgentClient(sock, t);
    client.checked = checked;
    return client;
  }

  drain() {
    while (this.buf.length >= 4) {
      const n = this.buf.readUInt32BE(0);
      if (n === 0 || n > MAX_FRAME) {
        this.sock.destroy(new AgentError("UNAVAILABLE", `the agent sent a frame of ${n} bytes`));
        return;
      }
      if (this.buf.length < 4 + n) return;
      const body = this.buf.subarray(4, 4 + n);
      this.buf = this.buf.subarray(4 + n);
      const w = this.waiters.shift();
      if (w) w.resolve(this.t.Response.decode(body));
    }
  }

  /** One request (a plain object shaped like keyagent.v1.Request); resolves to the Response's oneof value. */
  async call(request) {
    if (this.failure) throw this.failure;
    const err = this.t.Request.verify(request);
    if (err) throw new AgentError("BAD_REQUEST", err);
    const body = this.t.Request.encode(this.t.Request.fromObject(request)).finish();
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length, 0);
    const response = await new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.sock.write(Buffer.concat([head, Buffer.from(body)]));
    });
    const kind = response.response;
    if (kind === "error") {
      const e = response.error;
      const code = this.t.Code.valuesById[e.code ?? 0] ?? `CODE_${e.code}`;
      throw new AgentError(code, e.message ?? "", e.reason ?? "", e.reply?.length ? Buffer.from(e.reply) : null);
    }
    const want = Object.keys(request)[0];
    if (kind !== want) throw new AgentError("INTERNAL", `expected a ${want} response, got ${kind}`);
    return response[kind];
  }

  close() {
    this.sock.end();
  }
}
