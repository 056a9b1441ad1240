"use strict";
/*
 * Fast stand-in for the bench web process, answering only the calls a realtime server
 * makes: get_user_info at connect and the permission checks of the subscribe events.
 *
 * A real Frappe web worker takes milliseconds per call and would dominate the connect
 * storm; this answers in microseconds so the benchmark measures the realtime server.
 * Every credential is accepted: `sid=u123` (or `Authorization: token u123:secret`) is
 * user `u123@example.com`, a System User; `sid=Guest` is Guest.
 *
 * Usage: node server.js [--port PORT]   (0 or absent: any free port)
 * Prints one JSON line {"port": N} on stdout when it listens. GET /__stats answers the
 * request counts per method so the benchmark can check the auth calls really happen.
 */

const http = require("http");

const counts = {};

function credentialOf(req) {
	const auth = req.headers.authorization;
	if (auth) {
		const token = auth.replace(/^(token|Bearer)\s+/i, "");
		return token.split(":")[0];
	}
	const match = /(?:^|;\s*)sid=([^;]*)/.exec(req.headers.cookie || "");
	return match ? decodeURIComponent(match[1]) : null;
}

function sendJson(res, status, body) {
	const data = JSON.stringify(body);
	res.writeHead(status, {
		"Content-Type": "application/json",
		"Content-Length": Buffer.byteLength(data),
	});
	res.end(data);
}

function userInfo(req) {
	const who = credentialOf(req);
	if (!who || who === "Guest") {
		return { user: "Guest", user_type: "Guest", installed_apps: ["frappe"] };
	}
	return { user: `${who}@example.com`, user_type: "System User", installed_apps: ["frappe"] };
}

const handlers = {
	"frappe.realtime.get_user_info": (req, res) => sendJson(res, 200, { message: userInfo(req) }),
	"frappe.realtime.has_permission": (req, res) => sendJson(res, 200, { message: true }),
	"frappe.realtime.can_subscribe_doc": (req, res) => sendJson(res, 200, { message: true }),
	"frappe.realtime.can_subscribe_doctype": (req, res) => sendJson(res, 200, { message: true }),
};

const server = http.createServer((req, res) => {
	const qAt = req.url.indexOf("?");
	const pathname = qAt === -1 ? req.url : req.url.slice(0, qAt);
	if (pathname === "/__stats") return sendJson(res, 200, counts);
	const method = pathname.startsWith("/api/method/") ? pathname.slice(12) : null;
	const handler = method && handlers[method];
	if (!handler) return sendJson(res, 404, { exc_type: "DoesNotExistError" });
	counts[method] = (counts[method] || 0) + 1;
	return handler(req, res);
});
server.keepAliveTimeout = 60000;

let port = 0;
for (let i = 2; i < process.argv.length; i++) {
	if (process.argv[i] === "--port") port = Number(process.argv[++i]);
}
server.listen(port, "127.0.0.1", () => {
	process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
