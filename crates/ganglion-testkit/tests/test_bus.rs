//! The conformance suite on `TestBus`.

ganglion_testkit::conformance!(ganglion_testkit::harness::test_bus);
