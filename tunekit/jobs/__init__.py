"""The Files and Fine-tuning Jobs API's engine, behind ``tunekit serve``'s ``/v1/files`` and
``/v1/fine_tuning/jobs`` (the HTTP side is ``tunekit.server.routes_files`` / ``routes_jobs``).

Modules, one job each: ``store`` (the SQLite file: files, jobs — the queue is the jobs in status
``queued`` —, events, checkpoints), ``files`` (uploaded content, stored once per sha256),
``owners`` (API keys → owners; the request's caller), ``spec`` (OpenAI's hyperparameters →
``tunekit.finetune`` options), ``validate`` (a file's bad rows in OpenAI's error codes),
``progress`` (step metrics, events and the result CSV from the Trainer's checkpoints),
``runner`` (the queue and one worker process per running job), ``worker`` (the process that
trains), ``service`` (the API's operations, per owner).
"""
