//! The conformance suite on the embedded engine, its log on disk.

ganglion_testkit::conformance!(ganglion_testkit::harness::embedded);
