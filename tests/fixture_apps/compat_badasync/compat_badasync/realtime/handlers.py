from frappe.realtime import Socket, realtime


@realtime.on("bad_async", frappe_context=True)
async def needs_the_orm(socket: Socket) -> None:
    await socket.emit("never")
