"""An app written to Frappe's asyncio handler API, from its documentation only.

Frappe's newer server tells app authors to write ``async def`` handlers that ``await`` the
socket's actions, and gives plain handlers a blocking ``SyncSocket``.
"""

import asyncio
import json
from urllib.parse import urlparse

from frappe.realtime import Socket, realtime
from frappe.realtime.registry import realtime as registry_realtime
from frappe.realtime.socket import SyncSocket

assert registry_realtime is realtime


@realtime.on("connect")
async def join_own_room(socket: Socket) -> None:
    await socket.join(f"async_user:{socket.user}")


@realtime.on("async_subscribe")
async def async_subscribe(socket: Socket, project: str) -> None:
    room = f"project:{project}"
    if await socket.has_permission("Project", project):
        await socket.join(room)
    await socket.emit(
        "async_subscribed", {"project": project, "in": socket.sid in socket.participants(room)}
    )


@realtime.on("async_leave")
async def async_leave(socket: Socket, project: str) -> None:
    await socket.leave(f"project:{project}")
    await socket.emit("async_left", project)


@realtime.on("async_wait")
async def async_wait(socket: Socket, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(
        asyncio.sleep(seconds, result="a"), asyncio.sleep(seconds, result="b")
    )
    try:
        await asyncio.wait_for(asyncio.sleep(30), timeout=seconds)
        timed_out = False
    except asyncio.TimeoutError:
        timed_out = True
    await socket.emit(
        "async_waited",
        {"results": results, "timed_out": timed_out, "elapsed": loop.time() - started},
    )


@realtime.on("async_redis_ping")
async def async_redis_ping(socket: Socket) -> None:
    with open("common_site_config.json") as f:  # the realtime server runs in sites/
        url = urlparse(json.load(f)["redis_queue"])
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"PING\r\n")
    await writer.drain()
    answer = await reader.readline()
    writer.close()
    await writer.wait_closed()
    await socket.emit("async_redis", answer.decode().strip())


@realtime.on("async_viewers")
async def async_viewers(socket: Socket, room: str) -> None:
    users = [await socket.user_of(sid) for sid in socket.participants(room)]
    await socket.emit("async_viewers", sorted(set(filter(None, users))))


@realtime.on("async_state")
async def async_state(socket: Socket, key: str, value: object) -> None:
    await socket.set(key, value)
    await socket.emit("async_state", socket.get(key))


@realtime.on("async_guest", allow_guest=True)
async def async_guest(socket: Socket) -> None:
    await socket.emit("async_guest", socket.user)


class Counter:
    """An async callable object as a handler."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, socket: Socket) -> None:
        self.count += 1
        await socket.emit("async_counted", self.count)


realtime.on("async_count")(Counter())


@realtime.on("plain_in_async_app")
def plain_in_async_app(socket: SyncSocket, text: str) -> None:
    socket.emit("plain_said", {"text": text, "allowed": socket.has_permission("Project", text)})


@realtime.on("async_slow")
async def async_slow(socket: Socket) -> None:
    try:
        await asyncio.sleep(60)
    finally:
        await socket.emit("async_slow_ended")


@realtime.on("async_raise")
async def async_raise(socket: Socket) -> None:
    await asyncio.sleep(0)
    raise ValueError("async handler failed on purpose")


background: set = set()


@realtime.on("async_background")
async def async_background(socket: Socket) -> None:
    async def remind_later() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            print("background task of compat_async ended", flush=True)

    task = asyncio.create_task(remind_later())
    background.add(task)
    await socket.emit("async_background_started")
