"use strict";
/*
 * One load generator worker: holds a contiguous share of the benchmark clients.
 *
 * Several workers run side by side (forked by coordinator.js) so that socket.io-client's
 * per-message work is spread over processes and the generator is not the bottleneck of a
 * single event loop. Every client connects like a desk behind nginx: websocket transport
 * only, a `sid` cookie, Origin and X-Frappe-Site-Name.
 *
 * Received benchmark messages carry {p: phase, s: seq, t: monotonic µs at publish}; the
 * worker keeps per-client receipt of each seq (lost and duplicate counts) and a latency
 * histogram, and reports progress to the coordinator while a phase runs.
 */

const { io } = require("socket.io-client");
const hist = require("./hist");

const PROGRESS_MS = 20;

const clients = []; // socket per local index, null when it never connected
let first = 0; // global index of local client 0
let eventName = "bench";
const disconnects = {};
let tracker = null;

function send(msg) {
	process.send(msg);
}

function cpuSeconds() {
	const u = process.cpuUsage();
	return (u.user + u.system) / 1e6;
}

function newTracker(cmd) {
	return {
		phase: cmd.phase,
		mode: cmd.mode, // "fanout": every client gets every seq; "user": seq % n == index; "probe"
		n: cmd.n,
		recv: new Uint32Array(clients.length),
		seen: new Array(clients.length),
		received: 0,
		clientsWithAny: 0,
		duplicates: 0,
		misrouted: 0,
		stray: 0,
		hist: hist.create(),
		firstUs: null,
		lastUs: null,
		reported: -1,
	};
}

function record(local, msg) {
	const tr = tracker;
	if (!tr || !msg || msg.p !== tr.phase) {
		if (tr) tr.stray += 1;
		return;
	}
	const now = hist.nowUs();
	hist.add(tr.hist, now - msg.t);
	if (tr.firstUs === null) tr.firstUs = now;
	tr.lastUs = now;
	tr.received += 1;
	if (tr.recv[local]++ === 0) tr.clientsWithAny += 1;
	if (tr.mode === "probe") return;
	let k = msg.s;
	if (tr.mode === "user") {
		if (msg.s % tr.n !== first + local) {
			tr.misrouted += 1;
			return;
		}
		k = Math.floor(msg.s / tr.n);
	}
	let seen = tr.seen[local];
	if (!seen || k >= seen.length) {
		const grown = new Uint8Array(Math.max(k + 1, seen ? seen.length * 2 : 64));
		if (seen) grown.set(seen);
		seen = tr.seen[local] = grown;
	}
	if (seen[k]) tr.duplicates += 1;
	else seen[k] = 1;
}

function finishPhase(published) {
	const tr = tracker;
	tracker = null;
	let expected = 0;
	let delivered = 0;
	let unexpected = 0;
	let clientsMissing = 0;
	for (let local = 0; local < clients.length; local++) {
		if (!clients[local]) continue;
		const g = first + local;
		let want = 0;
		if (tr.mode === "fanout") want = published;
		else if (tr.mode === "user") want = g < published ? Math.floor((published - 1 - g) / tr.n) + 1 : 0;
		const seen = tr.seen[local];
		let got = 0;
		if (seen) {
			for (let k = 0; k < seen.length; k++) {
				if (!seen[k]) continue;
				if (k < want) got += 1;
				else unexpected += 1;
			}
		}
		expected += want;
		delivered += got;
		if (got < want) clientsMissing += 1;
	}
	return {
		phase: tr.phase,
		expected,
		delivered,
		lost: expected - delivered,
		duplicates: tr.duplicates,
		misrouted: tr.misrouted,
		unexpected,
		stray: tr.stray,
		received: tr.received,
		clients_with_any: tr.clientsWithAny,
		clients_missing: clientsMissing,
		first_us: tr.firstUs,
		last_us: tr.lastUs,
		hist: hist.toWire(tr.hist),
	};
}

/*
 * One client as a desk behind nginx would connect, except for the transport: websocket
 * only, like mobile and custom clients. Reconnection is off so that a failure is counted,
 * not hidden; permessage-deflate is not offered because neither server under test
 * compresses (offering it only adds client CPU).
 */
function openClient(cmd, sid) {
	return io(`${cmd.url}/${cmd.site}`, {
		path: "/socket.io",
		transports: ["websocket"],
		forceNew: true,
		reconnection: false,
		perMessageDeflate: false,
		timeout: cmd.timeout_ms,
		localAddress: cmd.local_address || undefined,
		extraHeaders: {
			Cookie: `sid=${sid}`,
			Origin: cmd.origin,
			"X-Frappe-Site-Name": cmd.site,
		},
	});
}

function connectAll(cmd) {
	first = cmd.first;
	eventName = cmd.event;
	const count = cmd.count;
	const h = hist.create();
	const errors = {};
	let next = 0;
	let done = 0;
	let connected = 0;
	let startUs = null;
	let endUs = null;
	return new Promise((resolve) => {
		if (count === 0) resolve({ connected: 0, failed: 0, errors, hist: hist.toWire(h) });
		const launch = () => {
			const local = next++;
			const user = `u${first + local}`;
			const t0 = hist.nowUs();
			if (startUs === null) startUs = t0;
			const socket = openClient(cmd, user);
			clients[local] = null;
			let settled = false;
			const settle = (ok, reason) => {
				if (settled) return;
				settled = true;
				const t1 = hist.nowUs();
				endUs = t1;
				if (ok) {
					connected += 1;
					clients[local] = socket;
					hist.add(h, t1 - t0);
				} else {
					errors[reason] = (errors[reason] || 0) + 1;
					socket.close();
				}
				done += 1;
				if (next < count) launch();
				if (done === count) {
					resolve({
						connected,
						failed: count - connected,
						errors,
						start_us: startUs,
						end_us: endUs,
						hist: hist.toWire(h),
					});
				}
			};
			socket.on("connect", () => settle(true));
			socket.on("connect_error", (err) => settle(false, String(err && err.message)));
			socket.on(eventName, (msg) => record(local, msg));
			socket.on("disconnect", (reason) => {
				if (reason !== "io client disconnect") {
					disconnects[reason] = (disconnects[reason] || 0) + 1;
				}
			});
		};
		const initial = Math.min(cmd.concurrency, count);
		for (let i = 0; i < initial; i++) launch();
	});
}

function connectedCount() {
	let n = 0;
	for (const s of clients) if (s && s.connected) n += 1;
	return n;
}

/*
 * Connect and close a few throwaway clients so that the timed storm measures steady
 * state rather than the first-use cost of both sides' code paths (module loading, JIT).
 */
function warmup(cmd) {
	const pending = [];
	for (let i = 0; i < cmd.count; i++) {
		pending.push(
			new Promise((resolve) => {
				const socket = openClient(cmd, `warmup${cmd.worker}x${i}`);
				const done = (ok) => {
					socket.close();
					resolve(ok);
				};
				socket.on("connect", () => done(true));
				socket.on("connect_error", () => done(false));
			})
		);
	}
	return Promise.all(pending).then((oks) => ({ connected: oks.filter(Boolean).length }));
}

const commands = {
	async connect(cmd) {
		return connectAll(cmd);
	},
	async warmup(cmd) {
		return warmup(cmd);
	},
	async emit(cmd) {
		let sent = 0;
		for (const s of clients) {
			if (s && s.connected) {
				s.emit(cmd.event, ...cmd.args);
				sent += 1;
			}
		}
		return { sent };
	},
	async phase_start(cmd) {
		tracker = newTracker(cmd);
		return {};
	},
	async phase_end(cmd) {
		return finishPhase(cmd.published);
	},
	async stats() {
		return {
			cpu_s: cpuSeconds(),
			rss_bytes: process.memoryUsage().rss,
			connected: connectedCount(),
			disconnects,
		};
	},
	async disconnect() {
		for (const s of clients) if (s) s.close();
		return {};
	},
};

setInterval(() => {
	const tr = tracker;
	if (!tr || tr.reported === tr.received) return;
	tr.reported = tr.received;
	send({ type: "progress", phase: tr.phase, received: tr.received, clients: tr.clientsWithAny });
}, PROGRESS_MS).unref();

process.on("message", async (cmd) => {
	try {
		const result = await commands[cmd.cmd](cmd);
		send({ id: cmd.id, ok: true, cpu_s: cpuSeconds(), ...result });
	} catch (err) {
		send({ id: cmd.id, ok: false, error: String(err && err.stack ? err.stack : err) });
	}
});
process.on("disconnect", () => process.exit(0));
