"""Rules and state machines: projects, tokens, builds. No protobuf and no SQL here."""
