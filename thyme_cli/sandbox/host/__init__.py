"""The host side of the sandbox: launching jails, pools, sessions, harvesting their output."""
