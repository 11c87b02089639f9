#!/usr/bin/env node
// One idle round with ioredis, for the fault lab (tests/lab/matrix.py):
//   connect at startAt+offset, SET/GET (warm-up), idle until startAt+offset+idle, SET (the
//   first command after the idle spell: its error and latency are what we measure), GET.
// Every retry that could hide an error is off: no command retries (maxRetriesPerRequest 0,
// autoResendUnfulfilledCommands false), no offline queue (a command sent while the client is
// not connected fails at once), no reconnectOnError. Reconnecting after the connection closes
// (ioredis's retryStrategy, i.e. what a pool does on a close) is on unless reconnect=false.
// Prints one JSON line on stdout and exits 0 (a measured error is data, not a failure).
//
// usage: node idle_round.js '{"host":"127.0.0.1","port":1234,"startAt":1700000000000,
//          "offset":0.0,"idle":4,"commandTimeoutMs":2000,"reconnect":true,"protocol":3,"key":"k"}'
"use strict";

const Redis = require("ioredis");

const args = JSON.parse(process.argv[2]);
const events = [];
const out = { ok: false, phase: "connect", error: null, latency_ms: null, verified: false, events };

function rel() {
  return Number(((Date.now() - args.startAt) / 1000).toFixed(3));
}

function sleepUntil(epochMs) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, epochMs - Date.now())));
}

function errText(err) {
  return `${err.name}: ${err.message}`;
}

async function main() {
  const client = new Redis({
    host: args.host,
    port: args.port,
    protocol: args.protocol ?? 3,
    lazyConnect: true,
    connectTimeout: 2000,
    commandTimeout: args.commandTimeoutMs,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    enableOfflineQueue: false,
    reconnectOnError: null,
    ...(args.reconnect === false ? { retryStrategy: () => null } : {}),
  });
  for (const ev of ["close", "reconnecting", "ready", "end"]) {
    client.on(ev, () => events.push([ev, rel()]));
  }
  client.on("error", (err) => events.push(["error", rel(), errText(err)]));

  const start = args.startAt + args.offset * 1000;
  try {
    await sleepUntil(start);
    await client.connect();
    out.phase = "warmup";
    await client.set(args.key, "warmup");
    if ((await client.get(args.key)) !== "warmup") throw new Error("warm-up GET mismatch");
    out.phase = "idle";
    await sleepUntil(start + args.idle * 1000);
    out.phase = "after-idle";
    const t0 = process.hrtime.bigint();
    try {
      await client.set(args.key, "after-idle");
      out.latency_ms = Number(process.hrtime.bigint() - t0) / 1e6;
      out.ok = true;
    } catch (err) {
      out.latency_ms = Number(process.hrtime.bigint() - t0) / 1e6;
      out.error = errText(err);
    }
    if (out.ok) {
      try {
        out.verified = (await client.get(args.key)) === "after-idle";
      } catch (err) {
        out.verify_error = errText(err);
      }
    }
  } catch (err) {
    out.error = errText(err); // a failure before the measured command: the harness reports it
  } finally {
    client.disconnect();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stdout.write(JSON.stringify({ ...out, error: `harness: ${errText(err)}` }) + "\n");
    process.exit(1);
  },
);
