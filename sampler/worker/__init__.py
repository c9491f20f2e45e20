"""The job runtime: claim, lease, heartbeat, checkpoint, record the end.

It knows only the job contract (`contract`) and the store; what a job does lives behind a
`JobRunner` (the Jukebox one is `sampler.cascade_runner`). No torch at import time.
"""
