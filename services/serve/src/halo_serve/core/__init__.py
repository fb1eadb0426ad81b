"""Pure serving logic (protocol, engine, backends), tested without NATS or HTTP."""
