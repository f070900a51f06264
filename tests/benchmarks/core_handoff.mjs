// How long one thread takes to see a value another thread wrote (a shared Int32 bounced with Atomics), in ns:
// the best of five trials of 20,000 round trips, halved. Run on an idle machine, the two threads sit on the two
// cores; on a virtual machine whose two cores the host places sometimes on one core complex (a shared L3) and
// sometimes on two, this tells the placement of the moment (docs/benchmarks.md, "Two placements of the
// cores"): the decoder's two threads hand data over all the time and run about 25 % slower in the second.
//
//     node tests/benchmarks/core_handoff.mjs    -> e.g. "41.3"
import { Worker, isMainThread, workerData } from "node:worker_threads";

const ROUND_TRIPS = 20_000;
const TRIALS = 5;

if (isMainThread) {
  const shared = new Int32Array(new SharedArrayBuffer(8)); // [0]: the ball (1: to the worker, 0: back, 2: stop); [1]: worker up
  const worker = new Worker(new URL(import.meta.url), { workerData: shared });
  while (Atomics.load(shared, 1) !== 1);
  let best = Infinity;
  for (let trial = 0; trial < TRIALS; trial++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < ROUND_TRIPS; i++) {
      Atomics.store(shared, 0, 1);
      while (Atomics.load(shared, 0) !== 0);
    }
    best = Math.min(best, Number(process.hrtime.bigint() - start) / ROUND_TRIPS / 2);
  }
  Atomics.store(shared, 0, 2);
  await new Promise((resolve) => worker.on("exit", resolve));
  console.log(best.toFixed(1));
} else {
  const shared = workerData;
  Atomics.store(shared, 1, 1);
  for (;;) {
    let ball;
    while ((ball = Atomics.load(shared, 0)) === 0);
    if (ball === 2) break;
    Atomics.store(shared, 0, 0);
  }
}
