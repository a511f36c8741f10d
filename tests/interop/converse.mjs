// The Node client's conversation, driven by tests/interop/test_node_client.py:
//   node converse.mjs <alice socket> <bob socket>
// asks alice for her identity and bundle, asks bob for his, encrypts from alice to bob, has bob decrypt it and
// answer, decrypts the answer at alice; prints one JSON object with what it saw (hex for bytes).
// With one argument only: the pre-connect checks alone (prints {"ok":...} or {"refused": code, "why": ...}).
import { AgentClient, AgentError } from "./agent_client.mjs";

const hex = (b) => Buffer.from(b).toString("hex");

async function main() {
  const [aliceSock, bobSock] = process.argv.slice(2);
  if (!bobSock) {
    const a = await AgentClient.connect(aliceSock);
    const st = await a.call({ status: {} });
    a.close();
    return { ok: true, checked: a.checked, status_backend: st.backend };
  }
  const alice = await AgentClient.connect(aliceSock);
  const bob = await AgentClient.connect(bobSock);
  const aId = await alice.call({ identity: {} });
  const aBundle = await alice.call({ bundle: {} });
  const bId = await bob.call({ identity: {} });
  const bBundle = await bob.call({ bundle: {} });

  const first = Buffer.from("hello from node, sealed by alice's agent");
  const enc = await alice.call({ encrypt: { peerIdentity: bId.identityPublicKey, payload: first,
                                            peerBundle: bBundle.bundle } });
  const got = await bob.call({ decrypt: { senderIdentity: aId.identityPublicKey, message: enc.message } });
  const answer = Buffer.from("bob's answer, through node");
  // identity text (0x04..., zQ3...) works too, as its UTF-8 bytes (a JS string in a bytes field means base64)
  const enc2 = await bob.call({ encrypt: { peerIdentity: Buffer.from(aId.publicKey, "utf8"),
                                           payload: answer, peerBundle: aBundle.bundle } });
  const back = await alice.call({ decrypt: { senderIdentity: bId.identityPublicKey, message: enc2.message } });
  await alice.call({ confirm: { refs: [back.confirmRef] } });

  let errorCode = null; // a typed error by its stable name
  try {
    await alice.call({ decrypt: { senderIdentity: bId.identityPublicKey, message: Buffer.from("no protobuf") } });
  } catch (e) {
    if (!(e instanceof AgentError)) throw e;
    errorCode = e.code;
  }
  alice.close();
  bob.close();
  return {
    alice: { identity: hex(aId.identityPublicKey), public_key: aId.publicKey, bundle: hex(aBundle.bundle) },
    bob: { identity: hex(bId.identityPublicKey), public_key: bId.publicKey },
    first_forward_secrecy: enc.forwardSecrecy,
    bob_got: got.payload.toString(), alice_got: back.payload.toString(),
    error_code: errorCode, checked: alice.checked,
  };
}

main().then(
  (out) => { console.log(JSON.stringify(out)); process.exit(0); },
  (e) => { console.log(JSON.stringify({ refused: e.code ?? "ERROR", why: String(e.message ?? e) })); process.exit(3); },
);
