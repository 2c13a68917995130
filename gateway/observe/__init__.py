"""What an operator asks of any process, the web process and a worker alike: ``/livez``,
``/readyz`` and ``/metrics`` (``health``) and the gauges only Redis knows, read at scrape time
(``gauges``). Imports the foundation, the stores and the OCS budget; the edge and the workers'
own listener (``workers/http.py``) serve it."""
