"""``sdmark serve``: the public detection tool over HTTP (JSON API and a web page).

An interface layer beside ``sdmark.cli``, not a plugin: it adds no stage and listens to no hook,
it calls the same Python API the CLI calls (``sdmark.plugins.watermark.verify.verify_file``), so a
verdict over HTTP is the verdict ``sdmark verify --json`` prints. Needs ``pip install 'sdmark[serve]'``.

``settings``  what an operator configures (limits, token, opt-ins), read from ``SDMARK_SERVE_*``
``limits``    the streaming body limit and the concurrency gate (503 with Retry-After)
``uploads``   multipart uploads into private temp files, content sniffing, pixel limit
``work``      the per-worker verifier and marker: schemes loaded once, CPU work in a thread
``metrics``   Prometheus counters and the latency histogram
``page``      the HTML report (Jinja2 templates, no external asset) and its view helpers
``openapi``   the OpenAPI document and the self-contained /docs page
``app``       the Starlette application that ties them together
"""
