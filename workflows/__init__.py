"""Workflows that chain the stages end to end: one round (:mod:`workflows.round`), run once by the
demo (:mod:`workflows.demo`) and round after round by the closed loop (:mod:`workflows.loop`).
Library code: the entry points in pipelines/ parse argv and call these."""
