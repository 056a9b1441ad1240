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
 *
 * The desk mix (run.py's "mix" phase) gives every client the rooms of a desk user: two
 * doctype rooms (list views) and one document (doc_subscribe and doc_open), chosen from the
 * client's index by the layout run.py sends; its events are Frappe's own (list_update,
 * doc_update, msgprint, progress) with {x: target index} added, so a receipt can be checked
 * against the client's rooms. A share of the clients reconnect during the phase, as a page
 * reload does; they are judged apart (what they miss while away is not a loss).
 */

const { io } = require("socket.io-client");
const hist = require("./hist");

const PROGRESS_MS = 20;

const clients = []; // socket per local index, null when it never connected
let first = 0; // global index of local client 0
let eventName = "bench";
const disconnects = {};
let tracker = null;
let connectCmd = null; // the last connect command: how reconnecting clients connect again
let layout = null; // the desk mix's room layout, from mix_subscribe

// Desk-mix events as published by run.py: event name -> kind code of the schedule.
const MIX_EVENTS = { list_update: "l", doc_update: "d", msgprint: "u", progress: "g" };
const MIX_READY = 7; // both doctype rooms (bits 1, 2) and the document room (bit 4) reached

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
		// desk mix
		masks: cmd.mode === "mixready" ? new Uint8Array(clients.length) : null,
		sets: cmd.mode === "mix" ? new Array(clients.length) : null,
		churned: new Uint8Array(clients.length),
		viewers: 0,
		churn: null,
		schedule: null,
	};
}

// The rooms of desk user G under the mix layout: two distinct doctypes and one document.
function doctypesOf(g) {
	return [g % layout.doctypes, (g + Math.floor(layout.doctypes / 2)) % layout.doctypes];
}

function docOf(g) {
	return g % layout.docs;
}

function isMember(kind, x, g) {
	if (kind === "l") {
		const [a, b] = doctypesOf(g);
		return x === a || x === b;
	}
	if (kind === "d") return x === docOf(g);
	return x === g; // msgprint and progress go to user:<u>
}

function recordMix(tr, local, msg, kind) {
	const g = first + local;
	if (tr.mode === "mixready") {
		let bit = 0;
		if (kind === "l") {
			const [a, b] = doctypesOf(g);
			bit = msg.x === a ? 1 : msg.x === b ? 2 : 0;
		} else if (kind === "d" && msg.x === docOf(g)) bit = 4;
		const before = tr.masks[local];
		tr.masks[local] |= bit;
		if (before !== MIX_READY && tr.masks[local] === MIX_READY) tr.clientsWithAny += 1;
		return;
	}
	if (!isMember(kind, msg.x, g)) {
		tr.misrouted += 1;
		return;
	}
	let seen = tr.sets[local];
	if (!seen) seen = tr.sets[local] = new Set();
	if (seen.has(msg.s)) tr.duplicates += 1;
	else seen.add(msg.s);
}

function record(local, msg, kind) {
	const tr = tracker;
	if (!tr || !msg || msg.p !== tr.phase) {
		if (tr) tr.stray += 1;
		return;
	}
	if (tr.mode === "mixready") {
		tr.received += 1; // progress: clientsWithAny counts the clients in all their rooms
		return recordMix(tr, local, msg, kind);
	}
	const now = hist.nowUs();
	hist.add(tr.hist, now - msg.t);
	if (tr.firstUs === null) tr.firstUs = now;
	tr.lastUs = now;
	tr.received += 1;
	if (tr.recv[local]++ === 0) tr.clientsWithAny += 1;
	if (tr.mode === "probe") return;
	if (tr.mode === "mix") return recordMix(tr, local, msg, kind);
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

/*
 * Deliveries the mix schedule owes each client (seq -> kind and target), judged for the
 * clients that stayed connected; reconnected clients' receipts are only counted.
 */
function judgeMix(tr) {
	const byDoctype = new Map();
	const byDoc = new Map();
	const add = (map, key, local) => {
		const list = map.get(key);
		if (list) list.push(local);
		else map.set(key, [local]);
	};
	for (let local = 0; local < clients.length; local++) {
		if (tr.churned[local] || !clients[local]) continue;
		const g = first + local;
		for (const d of doctypesOf(g)) add(byDoctype, d, local);
		add(byDoc, docOf(g), local);
	}
	const { kinds, targets } = tr.schedule;
	let expected = 0;
	let delivered = 0;
	const missing = new Set();
	for (let seq = 0; seq < kinds.length; seq++) {
		const kind = kinds[seq];
		const x = targets[seq];
		let members;
		if (kind === "l") members = byDoctype.get(x) || [];
		else if (kind === "d") members = byDoc.get(x) || [];
		else {
			const local = x - first;
			members = local >= 0 && local < clients.length && clients[local] && !tr.churned[local] ? [local] : [];
		}
		for (const local of members) {
			expected += 1;
			const seen = tr.sets[local];
			if (seen && seen.has(seq)) delivered += 1;
			else missing.add(local);
		}
	}
	let received = 0;
	let churnedReceived = 0;
	for (let local = 0; local < clients.length; local++) {
		const n = tr.sets[local] ? tr.sets[local].size : 0;
		if (tr.churned[local]) churnedReceived += n;
		else received += n;
	}
	return {
		expected,
		delivered,
		unexpected: received - delivered,
		clientsMissing: missing.size,
		churnedReceived,
	};
}

function finishMix(tr) {
	const j = judgeMix(tr);
	let churnedClients = 0;
	for (let local = 0; local < clients.length; local++) churnedClients += tr.churned[local];
	return {
		phase: tr.phase,
		expected: j.expected,
		delivered: j.delivered,
		lost: j.expected - j.delivered,
		duplicates: tr.duplicates,
		misrouted: tr.misrouted,
		unexpected: j.unexpected,
		stray: tr.stray,
		received: tr.received,
		clients_with_any: tr.clientsWithAny,
		clients_missing: j.clientsMissing,
		churned_clients: churnedClients,
		churned_delivered: j.churnedReceived,
		doc_viewers: tr.viewers,
		first_us: tr.firstUs,
		last_us: tr.lastUs,
		hist: hist.toWire(tr.hist),
	};
}

function finishPhase(published) {
	const tr = tracker;
	tracker = null;
	if (tr.mode === "mix") return finishMix(tr);
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

// What every client listens to: the benchmark event, the desk mix's events, doc_viewers.
function attach(socket, local) {
	socket.on(eventName, (msg) => record(local, msg, null));
	for (const [name, kind] of Object.entries(MIX_EVENTS)) {
		socket.on(name, (msg) => record(local, msg, kind));
	}
	socket.on("doc_viewers", () => {
		if (tracker) tracker.viewers += 1;
	});
	socket.on("disconnect", (reason) => {
		if (reason !== "io client disconnect") {
			disconnects[reason] = (disconnects[reason] || 0) + 1;
		}
	});
}

function connectAll(cmd) {
	first = cmd.first;
	eventName = cmd.event;
	connectCmd = cmd;
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
			attach(socket, local);
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

// What the desk does for user G: two list views open and one form (doc_subscribe, doc_open).
function subscribeMix(socket, g) {
	for (const d of doctypesOf(g)) socket.emit("doctype_subscribe", `${layout.doctype_prefix}${d}`);
	const name = `${layout.doc_prefix}${docOf(g)}`;
	socket.emit("doc_subscribe", layout.doc_doctype, name);
	socket.emit("doc_open", layout.doc_doctype, name);
}

/*
 * Reconnect RATE clients per second (a page reload: the old socket closes, a new one
 * connects with the same session and subscribes again), cycling through the clients so
 * that none reloads twice before the others did.
 */
function startChurn(tr, rate) {
	// idle: called when the last reconnect in flight settles, once churn_stop waits for it
	const churn = { cursor: 0, due: 0, inflight: 0, done: 0, failed: 0, errors: {}, hist: hist.create(), idle: null };
	let last = hist.nowUs();
	const settle = () => {
		churn.inflight -= 1;
		if (churn.inflight === 0 && churn.idle) churn.idle();
	};
	const reconnectOne = (local) => {
		const old = clients[local];
		if (!old) return;
		tr.churned[local] = 1;
		churn.inflight += 1;
		old.close();
		const t0 = hist.nowUs();
		const socket = openClient(connectCmd, `u${first + local}`);
		clients[local] = socket;
		attach(socket, local);
		socket.on("connect", () => {
			hist.add(churn.hist, hist.nowUs() - t0);
			churn.done += 1;
			subscribeMix(socket, first + local);
			settle();
		});
		socket.on("connect_error", (err) => {
			const reason = String(err && err.message);
			churn.errors[reason] = (churn.errors[reason] || 0) + 1;
			churn.failed += 1;
			clients[local] = null;
			socket.close();
			settle();
		});
	};
	churn.timer = setInterval(() => {
		const now = hist.nowUs();
		churn.due += (rate * (now - last)) / 1e6;
		last = now;
		while (churn.due >= 1 && clients.length) {
			churn.due -= 1;
			reconnectOne(churn.cursor);
			churn.cursor = (churn.cursor + 1) % clients.length;
		}
	}, 50);
	return churn;
}

function stopChurn(churn, timeoutMs) {
	clearInterval(churn.timer);
	return new Promise((resolve) => {
		const finish = () => {
			clearTimeout(timer);
			resolve({
				reconnects: churn.done,
				failed: churn.failed,
				pending: churn.inflight,
				errors: churn.errors,
				hist: hist.toWire(churn.hist),
			});
		};
		const timer = setTimeout(finish, timeoutMs);
		if (churn.inflight === 0) finish();
		else churn.idle = finish;
	});
}

/*
 * Call FN(socket, local) for every connected client, PER_S clients a second (all at once when
 * PER_S is 0). Every client of a population asking the server to join rooms in the same
 * instant made Frappe's Node server open a web call (a socket) per request: at 5 000 and
 * 10 000 clients it ran out of file descriptors (EMFILE under this machine's hard limit of
 * 20 000) and a quarter to three quarters of its clients never joined. Pacing measures what
 * the phases are for, delivering to rooms, and not a descriptor limit an operator would raise.
 */
async function paced(perS, fn) {
	const step = 50; // ms between slices
	const slice = perS > 0 ? Math.max(1, Math.round((perS * step) / 1000)) : clients.length;
	let sent = 0;
	for (let local = 0; local < clients.length; local++) {
		const s = clients[local];
		if (s && s.connected) {
			fn(s, local);
			sent += 1;
			if (sent % slice === 0) await new Promise((r) => setTimeout(r, step));
		}
	}
	return { sent };
}

const commands = {
	async connect(cmd) {
		return connectAll(cmd);
	},
	async warmup(cmd) {
		return warmup(cmd);
	},
	async emit(cmd) {
		return paced(cmd.per_s, (s) => s.emit(cmd.event, ...cmd.args));
	},
	async phase_start(cmd) {
		tracker = newTracker(cmd);
		if (cmd.mode === "mix" && cmd.churn_per_s > 0) tracker.churn = startChurn(tracker, cmd.churn_per_s);
		return {};
	},
	async mix_subscribe(cmd) {
		layout = cmd.layout;
		return paced(cmd.per_s, (s, local) => subscribeMix(s, first + local));
	},
	async churn_stop(cmd) {
		const churn = tracker && tracker.churn;
		if (!churn) return { reconnects: 0, failed: 0, pending: 0, errors: {}, hist: hist.toWire(hist.create()) };
		return stopChurn(churn, cmd.timeout_ms);
	},
	async mix_expect(cmd) {
		tracker.schedule = { kinds: cmd.kinds, targets: cmd.targets };
		return {};
	},
	async mix_pending() {
		const j = judgeMix(tracker);
		return { missing: j.expected - j.delivered };
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
