//! The conformance suites through the network and a real server (gRPC on loopback): the
//! bus's through the remote client over a `TestBus`, the coordinator's through the
//! generated coordinator client, each server on the harness's virtual clock.

ganglion_testkit::conformance!(ganglion_testkit::harness::remote);

mod coordinator {
    ganglion_testkit::coordinator_conformance!(ganglion_testkit::coordination::remote);
}
