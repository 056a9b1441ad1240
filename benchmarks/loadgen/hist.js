"use strict";
/*
 * Log-bucketed latency histogram shared by the workers and the coordinator.
 *
 * Workers may see millions of deliveries per phase; keeping every sample would cost more
 * memory and IPC than the clients themselves. Buckets of 1 % relative width keep every
 * percentile within 1 % of the exact value while staying a fixed, small array.
 */

const SCALE = 100; // buckets per factor e: bucket width ~1 %
const SIZE = Math.ceil(Math.log(1e9) * SCALE) + 1; // 1 µs .. 1000 s

/** Monotonic microseconds on CLOCK_MONOTONIC, the clock Python's time.monotonic_ns() reads. */
function nowUs() {
	const [s, ns] = process.hrtime();
	return s * 1e6 + ns / 1e3;
}

function create() {
	return { counts: new Float64Array(SIZE), n: 0, sum: 0, max: 0 };
}

function add(h, us) {
	const v = us < 1 ? 1 : us;
	let b = Math.floor(Math.log(v) * SCALE);
	if (b >= SIZE) b = SIZE - 1;
	h.counts[b] += 1;
	h.n += 1;
	h.sum += us;
	if (us > h.max) h.max = us;
}

/** Sparse form for IPC: only non-empty buckets. */
function toWire(h) {
	const buckets = [];
	for (let b = 0; b < SIZE; b++) if (h.counts[b]) buckets.push([b, h.counts[b]]);
	return { buckets, n: h.n, sum: h.sum, max: h.max };
}

function mergeWire(h, wire) {
	for (const [b, c] of wire.buckets) h.counts[b] += c;
	h.n += wire.n;
	h.sum += wire.sum;
	if (wire.max > h.max) h.max = wire.max;
}

function quantile(h, q) {
	if (!h.n) return null;
	const target = q * h.n;
	let seen = 0;
	for (let b = 0; b < SIZE; b++) {
		seen += h.counts[b];
		if (seen >= target && h.counts[b]) return Math.min(Math.exp((b + 0.5) / SCALE), h.max);
	}
	return h.max;
}

/** Summary in milliseconds, the unit of every latency in the reports. */
function summaryMs(h) {
	const ms = (us) => (us === null ? null : Math.round(us) / 1000);
	return {
		samples: h.n,
		mean_ms: h.n ? ms(h.sum / h.n) : null,
		p50_ms: ms(quantile(h, 0.5)),
		p90_ms: ms(quantile(h, 0.9)),
		p95_ms: ms(quantile(h, 0.95)),
		p99_ms: ms(quantile(h, 0.99)),
		p999_ms: ms(quantile(h, 0.999)),
		max_ms: h.n ? ms(h.max) : null,
	};
}

module.exports = { nowUs, create, add, toWire, mergeWire, summaryMs };
