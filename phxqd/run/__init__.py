"""Execution: running jobs (commands and Python callables) and what they leave behind.

Imports nothing, and must not: `phxqd.run.child` runs under the configured interpreter,
with only the standard library and msgspec.
"""
