// A zmqruntime client in another language, written from docs/protocol.md alone.
//
//   node client.mjs <connection-file> <python code> [<config code>]
//
// Runs the code on the server (config first, in the same namespace), prints
// each progress event as it arrives, waits for the 'done' event and fetches
// the results as JSON (results with format "json": no pickle reader needed).
// Every message received is checked against its HMAC signature before it is
// parsed. Last line on stdout: `RESULT <json>` (the test reads it).
// A TCP server encrypts with CurveZMQ by default: the connection file then
// names the server's key and this client's keypair (Z85), set on both sockets.

import { createHash, createHmac, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { Dealer, Subscriber } from "zeromq";

const MARKER = Buffer.from("<ZMQR>", "ascii");
const CHUNK = 4 * 1024 * 1024;
const TIMEOUT_MS = 10000;

function u64(n) {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

// §3.2: SHA256 over the SHA256 of each 4 MiB chunk (an empty buffer is one empty chunk).
function bufferDigest(buf) {
  const leaves = [];
  for (let i = 0; i === 0 || i < buf.length; i += CHUNK) {
    leaves.push(createHash("sha256").update(buf.subarray(i, i + CHUNK)).digest());
  }
  return createHash("sha256").update(Buffer.concat(leaves)).digest();
}

// §3.3: HMAC-SHA256 over length-prefixed topic, header, content, then the buffer digests.
function sign(key, topic, header, content, buffers) {
  const h = createHmac("sha256", key);
  for (const part of [topic, header, content]) {
    h.update(u64(part.length));
    h.update(part);
  }
  h.update(u64(buffers.length));
  for (const b of buffers) h.update(bufferDigest(b));
  return Buffer.from(h.digest("hex"), "ascii");
}

// §2: the signature frame is the first 70-byte frame starting with <ZMQR>; verify before parsing.
function verify(key, frames, hasTopic) {
  const at = frames.findIndex((f) => f.length === 70 && f.subarray(0, 6).equals(MARKER));
  if (at < 0 || frames.length - at < 3) return null;
  const topic = hasTopic && at > 0 ? frames[at - 1] : Buffer.alloc(0);
  const [sigFrame, header, content, ...buffers] = frames.slice(at);
  const expected = sign(key, topic, header, content, buffers);
  if (!createHmac("sha256", key).update(sigFrame.subarray(6)).digest().equals(
        createHmac("sha256", key).update(expected).digest())) {
    return null; // constant-time comparison through a second HMAC
  }
  return { header: JSON.parse(header), content: JSON.parse(content), buffers };
}

const newId = () => randomBytes(16).toString("hex");

function message(key, msgType, content) {
  const header = { msg_id: newId(), msg_type: msgType, session: SESSION, date: new Date().toISOString(),
                   version: "1.0", parent_id: null };
  const h = Buffer.from(JSON.stringify(header));
  const c = Buffer.from(JSON.stringify(content));
  return { msgId: header.msg_id, frames: [Buffer.concat([MARKER, sign(key, Buffer.alloc(0), h, c, [])]), h, c] };
}

const SESSION = newId();

// §6.3: one request at a time on a DEALER; replies matched on parent_id, others dropped.
async function request(dealer, key, msgType, content) {
  const { msgId, frames } = message(key, msgType, content);
  await dealer.send(frames);
  for (;;) {
    const reply = verify(key, await dealer.receive(), false);
    if (reply && reply.header.parent_id === msgId) {
      if (!reply.content.ok) {
        throw new Error(`${msgType}: [${reply.content.error.code}] ${reply.content.error.message}`);
      }
      return reply.content;
    }
  }
}

async function main() {
  const [connectionFile, code, config] = process.argv.slice(2);
  const info = JSON.parse(readFileSync(connectionFile, "utf8"));
  const key = Buffer.from(info.key, "ascii"); // §3.1: the ASCII bytes of the key string
  const curve = info.curve_server_key
    ? { curveServerKey: info.curve_server_key, curvePublicKey: info.curve_client_key,
        curveSecretKey: info.curve_client_secret }
    : {};
  const dealer = new Dealer({ linger: 0, receiveTimeout: TIMEOUT_MS, sendTimeout: TIMEOUT_MS, ...curve });
  dealer.connect(info.control_url);
  const sub = new Subscriber({ linger: 0, receiveTimeout: TIMEOUT_MS, ...curve });
  sub.connect(info.data_url);

  const ping = await request(dealer, key, "ping", {});
  console.log(`server pid ${ping.pid}, protocol ${ping.protocol_version}`);

  // Choose the id ourselves (§7.2) so we can subscribe before submitting.
  const executionId = randomBytes(6).toString("hex");
  sub.subscribe(`${executionId}.progress`); // also matches <id>.progress_batch
  sub.subscribe(`${executionId}.done`);
  const task = { kind: "python", code };
  if (config !== undefined) task.config = config;
  const accepted = await request(dealer, key, "execute", { task, execution_id: executionId, request_id: newId() });
  console.log(`queued ${accepted.execution_id} (done_subscribed: ${accepted.done_subscribed})`);

  // §9.5: wait for 'done' on the data channel; if the server had not seen our subscription
  // yet, the event may have gone by: then ask `status` instead of waiting for it.
  let status = null;
  if (!accepted.done_subscribed) {
    status = (await request(dealer, key, "status", { execution_id: executionId })).execution.status;
  }
  while (!["complete", "failed", "cancelled"].includes(status)) {
    let frames;
    try {
      frames = await sub.receive();
    } catch (err) {
      status = (await request(dealer, key, "status", { execution_id: executionId })).execution.status;
      continue;
    }
    const event = verify(key, frames, true);
    if (event === null) continue; // unsigned or forged: dropped
    const type = event.header.msg_type; // dispatch on the signed msg_type (§9.2)
    if (type === "progress") {
      console.log(`progress ${event.content.done}/${event.content.total} ${event.content.desc}`);
    } else if (type === "progress_batch") {
      const fields = event.content.fields;
      for (const row of event.content.events) {
        const p = Object.fromEntries(fields.map((f, i) => [f, row[i]]));
        console.log(`progress ${p.done}/${p.total} ${p.desc}`);
      }
    } else if (type === "done") {
      status = event.content.status;
    }
  }
  if (status !== "complete") throw new Error(`execution ${executionId} ${status}`);
  const results = await request(dealer, key, "results", { execution_id: executionId, format: "json" });
  console.log(`RESULT ${JSON.stringify(results.values)}`);
  dealer.close();
  sub.close();
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
