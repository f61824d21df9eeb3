"""The GPT-2 generation engine, independent of Triton and of the rest of the project.

Copied whole into each gpt2 repository version folder (`serving.model_versions`), where
Triton's Python backend imports it from the folder beside `model.py`; `export` (fidelity
gates and decode profiles), `serving` (the Triton adapter) and `benchmarks` import it here.
It imports none of them: only numpy, tokenizers and its runtimes' libraries.

- `core.Engine`: submit, cancel, step (plan, execute, update) and the generation loop;
- `scheduler.Scheduler`: admission, the step's plan (`plan`), advancing requests, slots;
- `runners`: the runner protocol (`runners.base`), one runner per runtime, a fake for tests;
- `runtimes`: the runtime table; `loader`: the engine of a version folder;
- `config.EngineConfig`: every setting; `request_schema`: the sampling fields;
- `sampler`, `detokenizer`, `output`: a request's per-token path; `metrics`: its figures.

Kept import-light: importing a module imports only what it needs, so `export` loads the
runners without the scheduler.
"""
