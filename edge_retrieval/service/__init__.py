"""The service: the frame loop, systemd notify, metrics."""
