#!/usr/bin/env node
// Several idle spells on ONE ioredis connection, for the pooled-mode tests (tests/lab/pooled.py):
//   connect, SET/GET (warm-up); then `rounds` times: idle `idle` s, SET (the measured command:
//   its error and latency are the data), GET (verify), and after a short pause SET/GET again
//   ("follow-up": shows whether the path recovered by itself).
// Every retry that could hide an error is off (as in idle_round.js): no command retries, no
// offline queue, no reconnectOnError. RESP2 (redis_proxy speaks only RESP2).
// Prints one JSON line on stdout and exits 0 (measured errors are data, not failures).
//
// usage: node pooled_rounds.js '{"host":"127.0.0.1","port":1234,"rounds":3,"idle":3.5,
//          "commandTimeoutMs":4000,"key":"k"}'
"use strict";

const Redis = require("ioredis");

const args = JSON.parse(process.argv[2]);
const out = { phase: "connect", spells: [], error: null, events: [] };
const t00 = Date.now();

function rel() {
  return Number(((Date.now() - t00) / 1000).toFixed(3));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function errText(err) {
  return `${err.name}: ${err.message}`;
}

async function timed(fn) {
  const t0 = process.hrtime.bigint();
  try {
    const value = await fn();
    return { ok: true, value, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
  } catch (err) {
    return { ok: false, error: errText(err), ms: Number(process.hrtime.bigint() - t0) / 1e6 };
  }
}

async function main() {
  const client = new Redis({
    host: args.host,
    port: args.port,
    protocol: 2,
    lazyConnect: true,
    connectTimeout: 2000,
    commandTimeout: args.commandTimeoutMs,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    enableOfflineQueue: false,
    reconnectOnError: null,
  });
  for (const ev of ["close", "reconnecting", "ready", "end"]) {
    client.on(ev, () => out.events.push([ev, rel()]));
  }
  client.on("error", (err) => out.events.push(["error", rel(), errText(err)]));
  try {
    await client.connect();
    out.phase = "warmup";
    await client.set(args.key, "warmup");
    if ((await client.get(args.key)) !== "warmup") throw new Error("warm-up GET mismatch");
    out.phase = "spells";
    for (let r = 0; r < args.rounds; r++) {
      await sleep(args.idle * 1000);
      const value = `after-idle-${r}`;
      const m = await timed(() => client.set(args.key, value));
      const spell = { ok: m.ok, error: m.error || null, latency_ms: m.ms, verified: false,
                      followup_error: null };
      if (m.ok) {
        const g = await timed(() => client.get(args.key));
        spell.verified = g.ok && g.value === value;
      }
      await sleep(300);
      const f1 = await timed(() => client.set(args.key, "followup"));
      const f2 = f1.ok ? await timed(() => client.get(args.key)) : f1;
      if (!f1.ok || !f2.ok) spell.followup_error = f1.error || f2.error;
      out.spells.push(spell);
    }
    out.phase = "done";
  } catch (err) {
    out.error = errText(err); // before or between the measured commands: a harness problem
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
