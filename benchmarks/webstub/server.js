"use strict";
/*
 * Fast stand-in for the bench web process, answering only the calls a realtime server
 * makes: get_user_info at connect and the permission checks of the subscribe events.
 *
 * A real Frappe web worker takes milliseconds per call and would dominate the connect
 * storm; this answers in microseconds so the benchmark measures the realtime server.
 * Every credential is accepted: `sid=u123` (cookie, or the `?sid=` query Frappe v15's Node
 * server sends) or `Authorization: token u123:secret` is user `u123@example.com`, a System
 * User; `sid=Guest` is Guest.
 *
 * `--flavour` makes it answer as one Frappe version's web process does (see
 * ../shared/frappe/README.md), so that Frappe's own Node server of that version runs
 * unmodified against it:
 *   v15      get_user_info -> {user, user_type}; can_subscribe_doc(doctype, docname) and
 *            can_subscribe_doctype(doctype); has_permission does not exist (HTTP 417,
 *            "... has no attribute 'has_permission'", as Frappe answers an unknown method).
 *   develop  get_user_info -> {user, user_type, installed_apps}; has_permission(doctype, name)
 *            with `name` required (HTTP 500 TypeError without it); no can_subscribe_*.
 *   any      every method above, always allowed (for the imitation baseline).
 *
 * Usage: node server.js [--port PORT] [--flavour v15|develop|any]
 * Prints one JSON line {"port": N} on stdout when it listens. GET /__stats answers
 * {"ok": {method: count}, "failed": {method: count}}: the calls answered 200 and the others,
 * so the benchmark can check that the auth and permission calls really happen.
 */

const http = require("http");

const ok = {};
const failed = {};

function queryOf(url) {
	const at = url.indexOf("?");
	return new URLSearchParams(at === -1 ? "" : url.slice(at + 1));
}

function credentialOf(req, query) {
	const auth = req.headers.authorization;
	if (auth) {
		const token = auth.replace(/^(token|Bearer)\s+/i, "");
		return token.split(":")[0];
	}
	if (query.get("sid")) return query.get("sid");
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

function userInfo(req, query, withApps) {
	const who = credentialOf(req, query);
	const info =
		!who || who === "Guest"
			? { user: "Guest", user_type: "Guest" }
			: { user: `${who}@example.com`, user_type: "System User" };
	if (withApps) info.installed_apps = ["frappe"];
	return info;
}

// What Frappe answers for a method its frappe/realtime.py does not define.
function noSuchMethod(res, method) {
	const name = method.split(".").pop();
	sendJson(res, 417, {
		exc_type: "ValidationError",
		exception:
			`frappe.exceptions.ValidationError: Failed to get method for command ${method} ` +
			`with module 'frappe.realtime' has no attribute '${name}'`,
	});
}

function allowed(res) {
	sendJson(res, 200, { message: true });
}

const FLAVOURS = {
	v15: {
		"frappe.realtime.get_user_info": (req, res, q) => sendJson(res, 200, { message: userInfo(req, q, false) }),
		"frappe.realtime.can_subscribe_doc": (req, res) => allowed(res),
		"frappe.realtime.can_subscribe_doctype": (req, res) => allowed(res),
	},
	develop: {
		"frappe.realtime.get_user_info": (req, res, q) => sendJson(res, 200, { message: userInfo(req, q, true) }),
		"frappe.realtime.has_permission": (req, res, q) => {
			if (!q.has("doctype") || !q.has("name")) {
				const missing = q.has("doctype") ? "'name'" : "'doctype'";
				return sendJson(res, 500, {
					exc_type: "TypeError",
					exception: `TypeError: has_permission() missing 1 required positional argument: ${missing}`,
				});
			}
			return allowed(res);
		},
	},
	any: {
		"frappe.realtime.get_user_info": (req, res, q) => sendJson(res, 200, { message: userInfo(req, q, true) }),
		"frappe.realtime.has_permission": (req, res) => allowed(res),
		"frappe.realtime.can_subscribe_doc": (req, res) => allowed(res),
		"frappe.realtime.can_subscribe_doctype": (req, res) => allowed(res),
	},
};

let port = 0;
let flavour = "any";
for (let i = 2; i < process.argv.length; i++) {
	if (process.argv[i] === "--port") port = Number(process.argv[++i]);
	else if (process.argv[i] === "--flavour") flavour = process.argv[++i];
}
const handlers = FLAVOURS[flavour];
if (!handlers) {
	process.stderr.write(`unknown flavour ${flavour} (${Object.keys(FLAVOURS).join(", ")})\n`);
	process.exit(2);
}

const server = http.createServer((req, res) => {
	const qAt = req.url.indexOf("?");
	const pathname = qAt === -1 ? req.url : req.url.slice(0, qAt);
	if (pathname === "/__stats") return sendJson(res, 200, { ok, failed });
	if (!pathname.startsWith("/api/method/")) return sendJson(res, 404, { exc_type: "DoesNotExistError" });
	const method = pathname.slice(12);
	const handler = handlers[method];
	const end = res.end;
	res.end = function (...args) {
		const counts = res.statusCode === 200 ? ok : failed;
		counts[method] = (counts[method] || 0) + 1;
		return end.apply(this, args);
	};
	if (!handler) return noSuchMethod(res, method);
	return handler(req, res, queryOf(req.url));
});
server.keepAliveTimeout = 60000;

server.listen(port, "127.0.0.1", () => {
	process.stdout.write(`${JSON.stringify({ port: server.address().port, flavour })}\n`);
});
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
