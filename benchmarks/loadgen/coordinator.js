"use strict";
/*
 * Load generator coordinator: forks the workers and runs their commands for run.py.
 *
 * run.py drives the scenarios (it also publishes to Redis and samples the server's
 * /proc), so the coordinator only fans each command out to every worker and merges the
 * answers. Protocol: one JSON command per line on stdin, one JSON line per answer on
 * stdout ({"id", "ok", ...}); while a phase runs, unsolicited progress lines
 * {"type": "progress", "phase", "received", "clients"} report the summed receipt so that
 * run.py can pace "as fast as possible" publishing and know when a phase has drained.
 *
 * Usage: node coordinator.js --workers 4
 */

const path = require("path");
const readline = require("readline");
const { fork } = require("child_process");
const hist = require("./hist");

const PROGRESS_MS = 20;

let workerCount = 4;
for (let i = 2; i < process.argv.length; i++) {
	if (process.argv[i] === "--workers") workerCount = Math.max(1, Number(process.argv[++i]));
}

function out(msg) {
	process.stdout.write(`${JSON.stringify(msg)}\n`);
}

const workers = [];
const pending = new Map(); // "<id>" -> {replies: [], resolve}
const progress = []; // latest progress per worker
let currentPhase = null;
let progressDirty = false;

for (let w = 0; w < workerCount; w++) {
	// A larger young generation: thousands of clients churn short-lived objects, and the
	// default semi-space makes the workers spend a large share of their CPU in scavenges.
	const child = fork(path.join(__dirname, "worker.js"), [], {
		stdio: ["ignore", "inherit", "inherit", "ipc"],
		execArgv: [...process.execArgv, "--max-semi-space-size=64"],
	});
	child.on("message", (msg) => onWorkerMessage(w, msg));
	child.on("exit", (code, signal) => {
		out({ type: "fatal", error: `worker ${w} exited (${code ?? signal})` });
		process.exit(1);
	});
	workers.push(child);
	progress.push({ received: 0, clients: 0 });
}

function onWorkerMessage(w, msg) {
	if (msg.type === "progress") {
		if (msg.phase !== currentPhase) return;
		progress[w] = { received: msg.received, clients: msg.clients };
		progressDirty = true;
		return;
	}
	const entry = pending.get(msg.id);
	if (!entry) return;
	entry.replies[w] = msg;
	entry.left -= 1;
	if (entry.left === 0) {
		pending.delete(msg.id);
		entry.resolve(entry.replies);
	}
}

let nextInternalId = 1;
function broadcast(perWorker) {
	const id = `w${nextInternalId++}`;
	return new Promise((resolve) => {
		pending.set(id, { replies: new Array(workers.length), left: workers.length, resolve });
		workers.forEach((child, w) => child.send({ id, ...perWorker(w) }));
	});
}

function failed(replies) {
	const bad = replies.find((r) => !r.ok);
	if (bad) throw new Error(bad.error);
	return replies;
}

function sumCpu(replies) {
	const own = process.cpuUsage();
	return replies.reduce((acc, r) => acc + r.cpu_s, (own.user + own.system) / 1e6);
}

function mergeCounts(target, source) {
	for (const [k, v] of Object.entries(source || {})) target[k] = (target[k] || 0) + v;
	return target;
}

function minOf(values) {
	const v = values.filter((x) => x !== null && x !== undefined);
	return v.length ? Math.min(...v) : null;
}

function maxOf(values) {
	const v = values.filter((x) => x !== null && x !== undefined);
	return v.length ? Math.max(...v) : null;
}

// A server of several processes (run.py's gsocket2) is given one URL each: worker w talks to
// urls[w % urls.length], as an nginx upstream would split the clients.
function urlOf(cmd, w) {
	return cmd.urls && cmd.urls.length ? cmd.urls[w % cmd.urls.length] : cmd.url;
}

const commands = {
	async connect(cmd) {
		const per = Math.ceil(cmd.n / workers.length);
		const concurrency = Math.max(1, Math.ceil(cmd.concurrency / workers.length));
		const addresses = cmd.local_addresses && cmd.local_addresses.length ? cmd.local_addresses : [null];
		const replies = failed(
			await broadcast((w) => ({
				cmd: "connect",
				url: urlOf(cmd, w),
				site: cmd.site,
				origin: cmd.origin,
				event: cmd.event,
				timeout_ms: cmd.timeout_ms,
				concurrency,
				first: Math.min(w * per, cmd.n),
				count: Math.max(0, Math.min(per, cmd.n - w * per)),
				local_address: addresses[w % addresses.length],
			}))
		);
		const h = hist.create();
		replies.forEach((r) => hist.mergeWire(h, r.hist));
		return {
			connected: replies.reduce((a, r) => a + r.connected, 0),
			failed: replies.reduce((a, r) => a + r.failed, 0),
			errors: replies.reduce((acc, r) => mergeCounts(acc, r.errors), {}),
			start_us: minOf(replies.map((r) => r.start_us)),
			end_us: maxOf(replies.map((r) => r.end_us)),
			latency: hist.summaryMs(h),
			cpu_s: sumCpu(replies),
		};
	},
	async warmup(cmd) {
		const addresses = cmd.local_addresses && cmd.local_addresses.length ? cmd.local_addresses : [null];
		const replies = failed(
			await broadcast((w) => ({
				cmd: "warmup",
				url: urlOf(cmd, w),
				site: cmd.site,
				origin: cmd.origin,
				timeout_ms: cmd.timeout_ms,
				count: cmd.count,
				worker: w,
				local_address: addresses[w % addresses.length],
			}))
		);
		return { connected: replies.reduce((a, r) => a + r.connected, 0), cpu_s: sumCpu(replies) };
	},
	async emit(cmd) {
		const perS = (cmd.per_s || 0) / workers.length;
		const replies = failed(await broadcast(() => ({ cmd: "emit", event: cmd.event, args: cmd.args, per_s: perS })));
		return { sent: replies.reduce((a, r) => a + r.sent, 0), cpu_s: sumCpu(replies) };
	},
	async phase_start(cmd) {
		currentPhase = cmd.phase;
		progress.fill({ received: 0, clients: 0 });
		// cmd.churn_per_s: reconnects per second of the whole population, split evenly
		const churn = (cmd.churn_per_s || 0) / workers.length;
		const replies = failed(
			await broadcast(() => ({ cmd: "phase_start", phase: cmd.phase, mode: cmd.mode, n: cmd.n, churn_per_s: churn }))
		);
		return { cpu_s: sumCpu(replies) };
	},
	async mix_subscribe(cmd) {
		const perS = (cmd.per_s || 0) / workers.length;
		const replies = failed(await broadcast(() => ({ cmd: "mix_subscribe", layout: cmd.layout, per_s: perS })));
		return { sent: replies.reduce((a, r) => a + r.sent, 0), cpu_s: sumCpu(replies) };
	},
	async churn_stop(cmd) {
		const replies = failed(await broadcast(() => ({ cmd: "churn_stop", timeout_ms: cmd.timeout_ms })));
		const h = hist.create();
		replies.forEach((r) => hist.mergeWire(h, r.hist));
		const sum = (key) => replies.reduce((a, r) => a + r[key], 0);
		return {
			reconnects: sum("reconnects"),
			failed: sum("failed"),
			pending: sum("pending"),
			errors: replies.reduce((acc, r) => mergeCounts(acc, r.errors), {}),
			latency: hist.summaryMs(h),
			cpu_s: sumCpu(replies),
		};
	},
	async mix_expect(cmd) {
		failed(await broadcast(() => ({ cmd: "mix_expect", kinds: cmd.kinds, targets: cmd.targets })));
		return {};
	},
	async mix_pending() {
		const replies = failed(await broadcast(() => ({ cmd: "mix_pending" })));
		return { missing: replies.reduce((a, r) => a + r.missing, 0) };
	},
	async phase_end(cmd) {
		const replies = failed(
			await broadcast(() => ({ cmd: "phase_end", published: cmd.published }))
		);
		currentPhase = null;
		const h = hist.create();
		replies.forEach((r) => hist.mergeWire(h, r.hist));
		const sum = (key) => replies.reduce((a, r) => a + r[key], 0);
		return {
			phase: cmd.phase,
			expected: sum("expected"),
			delivered: sum("delivered"),
			lost: sum("lost"),
			duplicates: sum("duplicates"),
			misrouted: sum("misrouted"),
			unexpected: sum("unexpected"),
			stray: sum("stray"),
			received: sum("received"),
			clients_with_any: sum("clients_with_any"),
			clients_missing: sum("clients_missing"),
			churned_clients: replies.reduce((a, r) => a + (r.churned_clients || 0), 0),
			churned_delivered: replies.reduce((a, r) => a + (r.churned_delivered || 0), 0),
			doc_viewers: replies.reduce((a, r) => a + (r.doc_viewers || 0), 0),
			first_us: minOf(replies.map((r) => r.first_us)),
			last_us: maxOf(replies.map((r) => r.last_us)),
			latency: hist.summaryMs(h),
			cpu_s: sumCpu(replies),
		};
	},
	async stats() {
		const replies = failed(await broadcast(() => ({ cmd: "stats" })));
		return {
			cpu_s: sumCpu(replies),
			rss_bytes: replies.reduce((a, r) => a + r.rss_bytes, process.memoryUsage().rss),
			connected: replies.reduce((a, r) => a + r.connected, 0),
			disconnects: replies.reduce((acc, r) => mergeCounts(acc, r.disconnects), {}),
		};
	},
	async disconnect() {
		const replies = failed(await broadcast(() => ({ cmd: "disconnect" })));
		return { cpu_s: sumCpu(replies) };
	},
	async quit() {
		setImmediate(() => {
			workers.forEach((child) => {
				child.removeAllListeners("exit");
				child.disconnect();
			});
			process.exit(0);
		});
		return {};
	},
};

setInterval(() => {
	if (!progressDirty || currentPhase === null) return;
	progressDirty = false;
	out({
		type: "progress",
		phase: currentPhase,
		received: progress.reduce((a, p) => a + p.received, 0),
		clients: progress.reduce((a, p) => a + p.clients, 0),
	});
}, PROGRESS_MS);

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
	if (!line.trim()) return;
	let cmd;
	try {
		cmd = JSON.parse(line);
		const handler = commands[cmd.cmd];
		if (!handler) throw new Error(`unknown command ${cmd.cmd}`);
		out({ id: cmd.id, ok: true, ...(await handler(cmd)) });
	} catch (err) {
		out({ id: cmd && cmd.id, ok: false, error: String(err && err.stack ? err.stack : err) });
	}
});
rl.on("close", () => commands.quit());
out({ type: "ready", workers: workers.length });
