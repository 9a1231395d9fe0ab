"""Generated protobuf and gRPC code for the `satchel.v1` API (see protos/)."""
