#!/usr/bin/env node
// ioredis's Cluster client against the lab's Redis Cluster (tests/lab/cluster.py):
//   mode "idle": SET/GET every key (warm-up, round 0), then `rounds` times: idle `idle` s, and
//     SET/GET every key again (the first command after the idle spell is the one that bites);
//   mode "busy": SET/GET every key, `pauseMs` between pairs, until `untilMs` (epoch ms), while
//     the lab migrates a slot under the client (ASK, then MOVED).
// Every retry that could hide an error is off: no command retries (maxRetriesPerRequest 0,
// autoResendUnfulfilledCommands false, retryDelayOnFailover/ClusterDown/TryAgain 0), no offline
// queue, no cluster reconnect (clusterRetryStrategy null; "reconnect": true keeps ioredis's
// default, which reconnects once every node connection has closed). Redirections (MOVED, ASK)
// are followed: they are how a cluster client works. Every command's outcome is recorded; a GET
// that reads back another value than the SET wrote is an error ("wrong value").
// Prints one JSON line on stdout and exits 0 (measured errors are data, not failures).
//
// usage: node cluster_rounds.js '{"host":"127.0.0.1","port":1234,"mode":"idle","keys":["k:1"],
//          "rounds":2,"idle":4,"commandTimeoutMs":2000,"untilMs":0,"pauseMs":10,
//          "reconnect":false}'
"use strict";

const { Cluster } = require("ioredis");

const args = JSON.parse(process.argv[2]);
const out = { phase: "connect", ops: [], last: {}, error: null, events: [] };
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

// One command, timed: recorded as [round, key, command, ok, error, ms, at (epoch s)].
async function op(round, key, command, fn) {
  const at = Date.now() / 1000;
  const t0 = process.hrtime.bigint();
  let ok = true;
  let error = null;
  try {
    await fn();
  } catch (err) {
    ok = false;
    error = errText(err);
  }
  out.ops.push([round, key, command, ok, error, Number(process.hrtime.bigint() - t0) / 1e6, at]);
  return ok;
}

async function setGet(cluster, round, key, value) {
  if (!(await op(round, key, "SET", () => cluster.set(key, value)))) return;
  out.last[key] = value;
  await op(round, key, "GET", async () => {
    const got = await cluster.get(key);
    if (got !== value) throw new Error(`wrong value ${JSON.stringify(got)}, wanted ${value}`);
  });
}

async function main() {
  const cluster = new Cluster([{ host: args.host, port: args.port }], {
    lazyConnect: true,
    enableOfflineQueue: false,
    ...(args.reconnect ? {} : { clusterRetryStrategy: null }),
    retryDelayOnFailover: 0,
    retryDelayOnClusterDown: 0,
    retryDelayOnTryAgain: 0,
    slotsRefreshTimeout: 2000,
    redisOptions: {
      connectTimeout: 2000,
      commandTimeout: args.commandTimeoutMs,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      reconnectOnError: null,
    },
  });
  for (const ev of ["ready", "close", "reconnecting", "end", "+node", "-node"]) {
    cluster.on(ev, () => out.events.push([ev, rel()]));
  }
  cluster.on("error", (err) => out.events.push(["error", rel(), errText(err)]));
  cluster.on("node error", (err, key) => out.events.push(["node error", rel(), errText(err), key]));
  try {
    await cluster.connect();
    out.phase = "run";
    if (args.mode === "idle") {
      for (let round = 0; round <= args.rounds; round++) {
        if (round > 0) await sleep(args.idle * 1000);
        for (const key of args.keys) await setGet(cluster, round, key, `${round}:${key}`);
      }
    } else {
      let n = 0;
      while (Date.now() < args.untilMs) {
        for (const key of args.keys) {
          await setGet(cluster, 0, key, `${n}:${key}`);
          await sleep(args.pauseMs);
        }
        n += 1;
      }
    }
    out.phase = "done";
  } catch (err) {
    out.error = errText(err); // outside a recorded command: the harness reports it
  } finally {
    cluster.disconnect();
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
