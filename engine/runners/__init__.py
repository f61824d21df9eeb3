"""The runners: what executes a step's forward calls on a runtime (`base.Runner`), one module
per runtime (named in `engine.runtimes`) and a deterministic fake for tests."""
