"use strict";
/*
 * Baseline realtime server for the gsocket benchmarks.
 *
 * It stands in for the Node.js socket.io process that Frappe benches run today, so that
 * gsocket is measured against the same work: multi-tenant dynamic namespaces, the HTTP
 * auth call at connect, default rooms, permission-checked doc subscriptions and a Redis
 * subscriber on `events`. It follows docs/frappe-contract.md and reads the same
 * common_site_config.json keys as gsocket.
 *
 * Usage: node server.js --bench BENCH_DIR
 */

const fs = require("fs");
const http = require("http");
const https = require("https");
const path = require("path");
const { Server } = require("socket.io");
const { createClient } = require("redis");

const SECRET_KEY = "socketio_auth_secret";
// The web process may create or rotate the socket secret at any time: re-read it often.
const SECRET_TTL_MS = 5000;
const WEB_TIMEOUT_MS = 10000;
// A bounded keep-alive pool: during a connect or subscribe storm of thousands of sockets an
// unbounded agent opens one web connection per pending call and runs out of descriptors.
const WEB_POOL = { keepAlive: true, maxSockets: 128, maxFreeSockets: 128 };
const httpAgent = new http.Agent(WEB_POOL);
const httpsAgent = new https.Agent(WEB_POOL);

function parseArgs(argv) {
	const args = {};
	for (let i = 2; i < argv.length; i++) {
		if (argv[i] === "--bench") args.bench = argv[++i];
	}
	if (!args.bench) {
		console.error("usage: node server.js --bench BENCH_DIR");
		process.exit(2);
	}
	return args;
}

function loadConf(benchDir) {
	const sitesDir = path.join(benchDir, "sites");
	const conf = JSON.parse(fs.readFileSync(path.join(sitesDir, "common_site_config.json"), "utf8"));
	const env = process.env;
	return {
		sitesDir,
		port: Number(env.FRAPPE_SOCKETIO_PORT || conf.socketio_port || 9000),
		uds: env.FRAPPE_SOCKETIO_UDS || conf.socketio_uds || null,
		redisUrl:
			env.FRAPPE_REDIS_QUEUE ||
			conf.redis_queue ||
			conf.redis_socketio ||
			"redis://127.0.0.1:11000",
		defaultSite: env.FRAPPE_SITE || conf.default_site || null,
		webserverHost: conf.webserver_host || null,
		webserverPort: conf.webserver_port || 8000,
		developerMode: Boolean(conf.developer_mode),
	};
}

/** Hostname of a URL or Host header value, without scheme, port or path. */
function hostnameOf(value) {
	if (!value) return undefined;
	let rest = value;
	const schemeAt = rest.indexOf("://");
	if (schemeAt !== -1) rest = rest.slice(schemeAt + 3);
	const slash = rest.indexOf("/");
	if (slash !== -1) rest = rest.slice(0, slash);
	const colon = rest.indexOf(":");
	return colon === -1 ? rest : rest.slice(0, colon);
}

function parseCookies(header) {
	const out = {};
	if (!header) return out;
	for (const part of header.split(";")) {
		const eq = part.indexOf("=");
		if (eq === -1) continue;
		const key = part.slice(0, eq).trim();
		if (key && !(key in out)) out[key] = decodeURIComponent(part.slice(eq + 1).trim());
	}
	return out;
}

const docRoom = (doctype, name) => `doc:${doctype}/${name}`;
const openDocRoom = (doctype, name) => `open_doc:${doctype}/${name}`;
const doctypeRoom = (doctype) => `doctype:${doctype}`;
const taskRoom = (taskId) => `task_progress:${taskId}`;

function main() {
	const args = parseArgs(process.argv);
	const conf = loadConf(args.bench);
	// Every bench process runs from sites/ (Frappe opens its logs relative to it).
	process.chdir(conf.sitesDir);

	const redis = createClient({ url: conf.redisUrl });
	const subscriber = redis.duplicate();
	for (const client of [redis, subscriber]) {
		client.on("error", (err) => console.error(`redis: ${err.message}`));
	}

	let secret = { value: null, at: 0, pending: null };
	async function socketSecret() {
		if (Date.now() - secret.at < SECRET_TTL_MS) return secret.value;
		if (!secret.pending) {
			secret.pending = redis
				.get(SECRET_KEY)
				.then((value) => {
					secret = { value, at: Date.now(), pending: null };
					return value;
				})
				.catch((err) => {
					secret.pending = null;
					console.error(`cannot read ${SECRET_KEY}: ${err.message}`);
					return null;
				});
		}
		return secret.pending;
	}

	function webUrl(socket, pathAndQuery) {
		if (conf.webserverHost) {
			const base = conf.webserverHost.includes("://")
				? conf.webserverHost
				: `http://${conf.webserverHost}`;
			const url = new URL(base);
			if (!url.port && conf.webserverPort) url.port = String(conf.webserverPort);
			return url.origin + pathAndQuery;
		}
		const origin = new URL(socket.request.headers.origin);
		if (conf.developerMode) origin.port = String(conf.webserverPort);
		return origin.origin + pathAndQuery;
	}

	/*
	 * GET a Frappe method on the web process with the client's credential.
	 *
	 * Plain http.request on a keep-alive agent, as the newest Frappe realtime does: it
	 * costs several times less CPU per call than the global fetch(), so the baseline is
	 * not handicapped by its HTTP client.
	 */
	async function frappeRequest(socket, method, query) {
		const qs = query ? `?${new URLSearchParams(query)}` : "";
		const headers = {};
		if (socket.data.authorization) headers.Authorization = socket.data.authorization;
		else headers.Cookie = `sid=${socket.data.sid}`;
		const value = await socketSecret();
		if (value) headers["X-Frappe-Socket-Secret"] = value;
		const url = new URL(webUrl(socket, `/api/method/${method}${qs}`));
		const secure = url.protocol === "https:";
		return new Promise((resolve, reject) => {
			const req = (secure ? https : http).request(
				url,
				{ headers, agent: secure ? httpsAgent : httpAgent },
				(res) => {
					const chunks = [];
					res.on("data", (chunk) => chunks.push(chunk));
					res.on("error", reject);
					res.on("end", () => {
						const text = Buffer.concat(chunks).toString("utf8");
						resolve({
							status: res.statusCode,
							json: () => JSON.parse(text),
						});
					});
				}
			);
			req.setTimeout(WEB_TIMEOUT_MS, () => req.destroy(new Error("web request timed out")));
			req.on("error", reject);
			req.end();
		});
	}

	function siteName(headers) {
		if (headers["x-frappe-site-name"]) return hostnameOf(headers["x-frappe-site-name"]);
		const host = hostnameOf(headers.host);
		if (conf.defaultSite && (host === "localhost" || host === "127.0.0.1")) {
			return conf.defaultSite;
		}
		if (headers.origin) return hostnameOf(headers.origin);
		return host;
	}

	async function authenticate(socket, next) {
		const headers = socket.request.headers;
		if (socket.nsp.name.slice(1) !== siteName(headers)) {
			return next(new Error("Invalid namespace"));
		}
		if (hostnameOf(headers.host) !== hostnameOf(headers.origin)) {
			return next(new Error("Invalid origin"));
		}
		const sid = parseCookies(headers.cookie).sid;
		if (!sid && !headers.authorization) {
			return next(
				new Error("No authentication method used. Use cookie or authorization header.")
			);
		}
		socket.data.sid = sid;
		socket.data.authorization = headers.authorization;
		try {
			const res = await frappeRequest(socket, "frappe.realtime.get_user_info");
			const body = res.status === 200 ? res.json() : null;
			const info = body && body.message;
			if (!info || !info.user) return next(new Error("Unauthorized"));
			socket.data.user = info.user;
			socket.data.userType = info.user_type;
			socket.data.installedApps = info.installed_apps || ["frappe"];
			return next();
		} catch (err) {
			return next(new Error(`Unauthorized: ${err.message}`));
		}
	}

	async function hasPermission(socket, doctype, name) {
		if (socket.data.user === "Guest" || !doctype) return false;
		try {
			const res = await frappeRequest(socket, "frappe.realtime.has_permission", {
				doctype,
				name: name || "",
			});
			if (res.status !== 200) return false;
			const body = res.json();
			return Boolean(body && body.message);
		} catch (err) {
			console.error(`permission check failed: ${err.message}`);
			return false;
		}
	}

	function notifyViewers(socket, doctype, name) {
		const room = openDocRoom(doctype, name);
		const members = socket.nsp.adapter.rooms.get(room) || new Set();
		const users = new Set();
		for (const id of members) {
			const member = socket.nsp.sockets.get(id);
			if (member) users.add(member.data.user);
		}
		if (users.size === 1 && users.has(socket.data.user)) return;
		socket.nsp
			.to(room)
			.emit("doc_viewers", { doctype, docname: name, users: Array.from(users) });
	}

	function onConnection(socket) {
		socket.join(`user:${socket.data.user}`);
		socket.join("website");
		if (socket.data.userType === "System User") socket.join("all");
		socket.data.openDocs = [];

		socket.on("ping", () => socket.emit("pong"));
		socket.on("doctype_subscribe", async (doctype) => {
			if (await hasPermission(socket, doctype)) socket.join(doctypeRoom(doctype));
		});
		socket.on("doctype_unsubscribe", (doctype) => socket.leave(doctypeRoom(doctype)));
		socket.on("doc_subscribe", async (doctype, name) => {
			if (name && (await hasPermission(socket, doctype, name))) {
				socket.join(docRoom(doctype, name));
			}
		});
		socket.on("doc_unsubscribe", (doctype, name) => socket.leave(docRoom(doctype, name)));
		socket.on("doc_open", async (doctype, name) => {
			if (!name || !(await hasPermission(socket, doctype, name))) return;
			socket.join(openDocRoom(doctype, name));
			socket.data.openDocs.push([doctype, name]);
			notifyViewers(socket, doctype, name);
		});
		socket.on("doc_close", (doctype, name) => {
			socket.leave(openDocRoom(doctype, name));
			socket.data.openDocs = socket.data.openDocs.filter(
				([dt, dn]) => !(dt === doctype && dn === name)
			);
			notifyViewers(socket, doctype, name);
		});
		for (const event of ["task_subscribe", "progress_subscribe"]) {
			socket.on(event, (taskId) => socket.join(taskRoom(taskId)));
		}
		socket.on("task_unsubscribe", (taskId) => socket.leave(taskRoom(taskId)));
		socket.on("open_in_editor", (data) => {
			if (conf.developerMode) redis.publish("open_in_editor", JSON.stringify(data));
		});
		socket.on("disconnect", () => {
			for (const [doctype, name] of socket.data.openDocs) notifyViewers(socket, doctype, name);
		});
	}

	const httpServer = http.createServer((req, res) => {
		if (req.url === "/health") {
			res.writeHead(200, { "Content-Type": "text/plain" });
			res.end("ok");
			return;
		}
		res.writeHead(404);
		res.end();
	});
	const io = new Server(httpServer, {
		cors: { origin: true, credentials: true },
		cleanupEmptyChildNamespaces: true,
	});
	const sites = io.of(/^\/.*$/);
	sites.use(authenticate);
	sites.on("connection", onConnection);

	function onEvent(raw) {
		let msg;
		try {
			msg = JSON.parse(raw);
		} catch (err) {
			console.error(`skipping malformed event: ${err.message}`);
			return;
		}
		if (msg.room) io.of(`/${msg.namespace}`).to(msg.room).emit(msg.event, msg.message);
		else sites.emit(msg.event, msg.message);
	}

	(async () => {
		await redis.connect();
		await subscriber.connect();
		await subscriber.subscribe("events", onEvent);
		httpServer.on("listening", () => {
			console.log(`baseline realtime listening on ${conf.uds || conf.port}`);
		});
		if (conf.uds) httpServer.listen(conf.uds);
		else httpServer.listen(conf.port, "127.0.0.1");
	})().catch((err) => {
		console.error(`startup failed: ${err.stack || err}`);
		process.exit(1);
	});

	const stop = () => {
		io.close();
		process.exit(0);
	};
	process.on("SIGTERM", stop);
	process.on("SIGINT", stop);
}

main();
