//! The bus conformance suite through `ganglion_core::bus::layer` over `TestBus` used as a
//! plain engine: filters, batch windows and dead-lettering come from the layer, and
//! behave as the embedded engine's own.

ganglion_testkit::conformance!(ganglion_testkit::harness::layered);
