"""Python callables for the tests' callable jobs (imported inside phxq workers)."""
