// The gsocket demo page: a Frappe desk's realtime client, made visible.
//
// The connection is made exactly as the desk's socketio_client.js makes it on a development
// bench: the page's host with the bench's socketio_port, namespace "/<sitename>", the sid
// cookie (withCredentials), default transports (long-polling first, then the upgrade to a
// websocket) and reconnectionAttempts: 3.
(function () {
  "use strict";

  const boot = window.demo_boot;
  const doc = boot.doc;
  const $ = (id) => document.getElementById(id);
  let docOpen = false;
  let connects = 0;

  function socketUrl() {
    const url = new URL(window.location.origin);
    url.port = String(boot.socketio_port);
    return url.origin + "/" + boot.sitename;
  }

  function now() {
    return new Date().toLocaleTimeString();
  }

  function log(event, args) {
    const item = document.createElement("li");
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = now() + " ";
    const name = document.createElement("span");
    name.className = "event";
    name.textContent = event;
    item.append(time, name, " " + args.map((a) => JSON.stringify(a)).join(", "));
    item.dataset.event = event;
    const list = $("log");
    list.prepend(item);
    while (list.children.length > 200) list.lastChild.remove();
  }

  function setState(state, detail) {
    const badge = $("state");
    badge.dataset.state = state;
    badge.textContent = detail ? state + " (" + detail + ")" : state;
  }

  function showTransport() {
    const engine = socket.io.engine;
    $("transport").textContent = engine && engine.transport ? engine.transport.name : "-";
  }

  function showRooms(rooms) {
    const list = $("rooms");
    list.replaceChildren(
      ...rooms.map((room) => {
        const item = document.createElement("li");
        item.textContent = room;
        return item;
      })
    );
    list.dataset.rooms = JSON.stringify(rooms);
  }

  function refreshRooms() {
    socket.timeout(5000).emit("demo_rooms", (err, rooms) => {
      if (err) {
        log("(no answer to demo_rooms)", [String(err)]);
      } else {
        showRooms(rooms);
        if (docOpen && !rooms.includes("open_doc:" + doc.doctype + "/" + doc.name)) {
          $("viewers").textContent = "not you: " + boot.user + " may not read this document";
          $("viewers").dataset.users = "[]";
        }
      }
    });
  }

  function showViewers(users) {
    const viewers = $("viewers");
    viewers.textContent = users.length ? users.join(", ") : "nobody";
    viewers.dataset.users = JSON.stringify(users);
  }

  function openDoc() {
    // What a desk form does on load and on refresh; the acks are a demo extra, so that the
    // room list is asked for once the permission checks are done.
    socket.emit("doc_subscribe", doc.doctype, doc.name, () => {
      socket.emit("doc_open", doc.doctype, doc.name, refreshRooms);
    });
    docOpen = true;
    showViewers([boot.user]);
    $("open-doc").disabled = true;
    $("close-doc").disabled = false;
  }

  function closeDoc() {
    socket.emit("doc_close", doc.doctype, doc.name);
    socket.emit("doc_unsubscribe", doc.doctype, doc.name, refreshRooms);
    docOpen = false;
    showViewers([]);
    $("open-doc").disabled = false;
    $("close-doc").disabled = true;
  }

  function post(method, data) {
    return fetch("/api/method/" + method, {
      method: "POST",
      body: new URLSearchParams(data || {}),
      credentials: "same-origin",
    }).then((r) => r.json().then((body) => ({ ok: r.ok, body })));
  }

  const socket = io(socketUrl(), { withCredentials: true, reconnectionAttempts: 3 });
  window.demo_socket = socket;

  socket.io.on("open", () => {
    showTransport();
    socket.io.engine.on("upgrade", showTransport);
  });
  socket.io.on("reconnect_attempt", (attempt) => setState("reconnecting", "attempt " + attempt));
  socket.io.on("reconnect_failed", () => setState("failed", "gave up after 3 attempts"));

  socket.on("connect", () => {
    connects += 1;
    $("connects").textContent = String(connects);
    $("connects").dataset.count = String(connects);
    $("sid").textContent = socket.id;
    setState("connected");
    showTransport();
    if (docOpen) {
      openDoc();
    } else {
      refreshRooms();
    }
  });
  socket.on("disconnect", (reason) => {
    setState("disconnected", reason);
    $("transport").textContent = "-";
  });
  socket.on("connect_error", (err) => {
    setState(socket.active ? "reconnecting" : "refused", err.message);
    log("(connect_error)", [err.message]);
  });

  socket.onAny((event, ...args) => log(event, args));

  socket.on("progress", (data) => {
    let percent = data.percent;
    if (data.progress) percent = (data.progress[0] / data.progress[1]) * 100;
    if (percent === undefined || percent === null) return;
    const bar = $("progress");
    bar.value = percent;
    bar.dataset.percent = String(Math.round(percent));
    $("progress-percent").textContent = Math.round(percent) + " %";
    $("progress-text").textContent = [data.title, data.description].filter(Boolean).join(": ");
  });

  socket.on("doc_viewers", (data) => {
    if (data.doctype === doc.doctype && data.docname === doc.name && docOpen) {
      showViewers(data.users);
    }
  });

  function setup() {
    $("site").textContent = boot.sitename;
    $("user").textContent = boot.user;
    $("user-type").textContent = boot.user_type;
    $("doc-name").textContent = doc.doctype + " " + doc.name;
    $("publish-example").textContent =
      "gsocket publish --bench " + boot.bench + " --site " + boot.sitename +
      " --room user:" + boot.user + " demo_notice '{\"text\": \"hello\"}'";

    const select = $("login-user");
    for (const user of boot.users) {
      const option = document.createElement("option");
      option.value = user.name;
      option.textContent = user.label;
      option.selected = user.name === boot.user;
      select.append(option);
    }
    $("login").addEventListener("click", () => {
      const usr = select.value;
      post(usr === "Guest" ? "logout" : "login", { usr }).then(() => window.location.reload());
    });

    $("refresh-rooms").addEventListener("click", refreshRooms);
    $("open-doc").addEventListener("click", openDoc);
    $("close-doc").addEventListener("click", closeDoc);

    $("start-job").addEventListener("click", () => {
      $("progress").value = 0;
      $("progress").dataset.percent = "0";
      $("progress-percent").textContent = "0 %";
      post("gsocket_demo.api.start_job").then((r) => log("(job started)", [r.body.message]));
    });

    $("call-hello").addEventListener("click", () => {
      $("ack").textContent = "waiting for the acknowledgement...";
      socket.timeout(5000).emit("demo_hello", $("hello-text").value, (err, ack) => {
        let text;
        if (err) {
          text = "no acknowledgement within 5 s (" + err.message + ")";
        } else if (ack === undefined) {
          text = "empty acknowledgement: the handler did not run (Guests may not call it)";
        } else {
          text = JSON.stringify(ack, null, 1);
        }
        $("ack").textContent = text;
      });
    });

    if (boot.can_restart) {
      const restart = $("restart");
      restart.hidden = false;
      restart.addEventListener("click", () => {
        post("gsocket_demo.api.restart_realtime").then(() => log("(gsocket restart requested)", []));
      });
    }
  }

  setup();
})();
