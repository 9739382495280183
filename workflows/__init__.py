"""Workflows that chain the stages end to end: the demo's single round (:mod:`workflows.demo`) and
the closed loop's rounds (:mod:`workflows.loop`).  Library code: the entry points in pipelines/
parse argv and call these."""
