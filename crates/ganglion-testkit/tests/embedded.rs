//! The conformance suites in process: the bus's on the embedded engine (its log on
//! disk), the coordinator's on the embedded coordinator (its state in memory, and in
//! files).

ganglion_testkit::conformance!(ganglion_testkit::harness::embedded);

mod coordinator_in_memory {
    ganglion_testkit::coordinator_conformance!(ganglion_testkit::coordination::in_memory);
}

mod coordinator_on_disk {
    ganglion_testkit::coordinator_conformance!(ganglion_testkit::coordination::on_disk);
}
