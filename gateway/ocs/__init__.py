"""Open Chat Studio: the Chat API client, the request budget it spends from, and (in
``simulator/``) a faithful fake of the server for tests, benchmarks and the quickstart.
Imports the foundation and the stores."""
