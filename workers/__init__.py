"""The Dramatiq side: broker setup, the actors that move conversations forward, and the
housekeeping loop that rescues stalled turns and polls for bot-initiated messages."""
