// Interop peer for tests/interop: js-waku's payload encryption (@waku/message-encryption, pinned in
// package-lock.json) driven over JSON lines on stdin/stdout. One request per line, one reply per line, in order.
// All byte strings are lowercase hex. Requests:
//   {"op":"seal", "mode":"asymmetric"|"symmetric", "payload", "to"|"sym_key", "sig_priv"?}  -> {"ok", "wire"}
//   {"op":"open", "mode", "wire", "priv"|"sym_key"}  -> {"ok", "payload", "signer", "signature"}
//   {"op":"encode_message", "mode", "payload", "to"|"sym_key", "sig_priv"?}  (the full Encoder, WakuMessage v1)
//        -> {"ok", "wire", "version", "content_topic"}
// Failures answer {"ok": false, "error": "..."}; the peer never exits on a bad request.
import { createInterface } from "node:readline";
import * as ecies from "@waku/message-encryption/ecies";
import * as symmetric from "@waku/message-encryption/symmetric";

const hex = (u8) => Buffer.from(u8).toString("hex");
const bytes = (h) => new Uint8Array(Buffer.from(h, "hex"));
// Only pubsubTopic is read by the 0.0.38 encoder; the shard numbers are arbitrary but well-formed.
const routingInfo = { pubsubTopic: "/waku/2/rs/16/32", clusterId: 16, shardId: 32 };

async function seal(req) {
  const sig = req.sig_priv ? bytes(req.sig_priv) : undefined;
  const env = await ecies.preCipher(bytes(req.payload), sig);
  const wire = req.mode === "asymmetric"
    ? await ecies.encryptAsymmetric(env, bytes(req.to))
    : await symmetric.encryptSymmetric(env, bytes(req.sym_key));
  return { wire: hex(wire) };
}

async function open(req) {
  const env = req.mode === "asymmetric"
    ? await ecies.decryptAsymmetric(bytes(req.wire), bytes(req.priv))
    : await symmetric.decryptSymmetric(bytes(req.wire), bytes(req.sym_key));
  const res = ecies.postCipher(env);
  if (!res) throw new Error("postCipher refused the envelope");
  return {
    payload: hex(res.payload),
    signer: res.sig && res.sig.publicKey ? hex(res.sig.publicKey) : null,
    signature: res.sig ? hex(res.sig.signature) : null,
  };
}

async function encodeMessage(req) {
  const contentTopic = req.content_topic || "/waku/1/0x00000000/rfc26";
  const sigPrivKey = req.sig_priv ? bytes(req.sig_priv) : undefined;
  const encoder = req.mode === "asymmetric"
    ? ecies.createEncoder({ contentTopic, routingInfo, publicKey: bytes(req.to), sigPrivKey })
    : symmetric.createEncoder({ contentTopic, routingInfo, symKey: bytes(req.sym_key), sigPrivKey });
  const proto = await encoder.toProtoObj({ payload: bytes(req.payload) });
  return { wire: hex(proto.payload), version: proto.version, content_topic: proto.contentTopic };
}

const ops = { seal, open, encode_message: encodeMessage };
const rl = createInterface({ input: process.stdin, terminal: false });
for await (const line of rl) {
  if (!line.trim()) continue;
  let reply;
  try {
    const req = JSON.parse(line);
    const fn = ops[req.op];
    if (!fn) throw new Error(`unknown op ${req.op}`);
    reply = { ok: true, ...(await fn(req)) };
  } catch (err) {
    reply = { ok: false, error: String(err && err.message ? err.message : err) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
}
