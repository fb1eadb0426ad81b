"""Pure, streaming logic of the data steps (no NATS): each step reads records one at a time and writes its
output as it goes, so files larger than memory work. Tested without a bus."""
