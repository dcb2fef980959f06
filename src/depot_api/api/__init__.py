"""Transport: Connect/gRPC services mapping protobuf messages to domain calls. No SQL here."""
