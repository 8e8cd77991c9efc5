//! The conformance suite through the remote client and a real server (gRPC on
//! loopback), over a `TestBus` so the scenarios move the server's clock.

ganglion_testkit::conformance!(ganglion_testkit::harness::remote);
