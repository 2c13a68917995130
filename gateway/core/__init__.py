"""The foundation: the values that travel between the parts (models), the error tree, the
configuration, the Redis key names, the channel interface every adapter implements, and the
small guards every edge needs (strict JSON, safe fetching, log redaction). Imports nothing else
of the gateway."""
