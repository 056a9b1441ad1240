"""Engine.IO and Socket.IO: the layer that speaks the protocol to clients.

The server, the room index, the wire codec, the transport (writer, session, HTTP), the
guards and the scale-out manager.  Every hook into another library's internals lives in this
layer; the layers above it (contract, handlers, cluster, ops) use only public APIs.
"""
