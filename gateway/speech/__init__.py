"""The speech service beside OCS: voice notes in as words, answers out as voice notes, through any
OpenAI-compatible audio API (docs/VOICE.md). The client (``client.py``) is to speech what
``gateway.ocs.client`` is to OCS; ``audio.py`` reads and converts audio with PyAV."""
