"""Frappe's app hooks: only the metadata ``install-app`` needs; the app has no DocTypes."""

app_name = "rtscope"
app_title = "Realtime Scope"
app_publisher = "gsocket tests"
app_description = "Realtime handlers that run only on the sites this app is installed on"
app_email = "tests@example.com"
app_license = "MIT"
