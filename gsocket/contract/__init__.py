"""The Frappe contract: what a bench expects of its realtime process.

Who may connect (auth, sites, the socket secret, the web process calls), the desk's own
events, Frappe's room names, and the Redis bridge that emits what the web process publishes.
"""
