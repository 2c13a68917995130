"""The worker side: the turn runner (an event loop that owns conversations and drives their
turns), the turn engine, bot-initiated message polls, and the Dramatiq actors that hand
conversations to the runner."""
