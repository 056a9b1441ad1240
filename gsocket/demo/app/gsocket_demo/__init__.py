"""gsocket_demo: the app ``gsocket demo`` installs on its demo bench to show custom handlers."""
